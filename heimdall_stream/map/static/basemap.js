// The offline basemap: a latitude/longitude grid and the coastlines and borders of Natural
// Earth (1:50m, shipped with the package). Drawn under the results, and under the tiles when a
// tile server is configured, so the map is readable whether or not tiles load.
"use strict";

window.HeimdallBasemap = (function () {
  const STEPS = [30, 20, 10, 5, 2, 1, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01];

  function grid(map, renderer) {
    const layer = L.layerGroup().addTo(map);
    function draw() {
      layer.clearLayers();
      const b = map.getBounds();
      const span = Math.max(b.getNorth() - b.getSouth(), (b.getEast() - b.getWest()) / 1.5);
      const step = STEPS.find((s) => span / s >= 4) || STEPS[STEPS.length - 1];
      const decimals = Math.max(0, -Math.floor(Math.log10(step)));
      const style = { color: "#8fa3b3", weight: 0.7, opacity: 0.8, interactive: false, renderer };
      const south = Math.max(-85, b.getSouth()), north = Math.min(85, b.getNorth());
      for (let lat = Math.ceil(south / step) * step; lat <= north; lat += step) {
        layer.addLayer(L.polyline([[lat, b.getWest()], [lat, b.getEast()]], style));
        layer.addLayer(label([lat, b.getWest()], lat.toFixed(decimals) + "°" + (lat >= 0 ? "N" : "S"), [-2, 12]));
      }
      for (let lon = Math.ceil(b.getWest() / step) * step; lon <= b.getEast(); lon += step) {
        layer.addLayer(L.polyline([[south, lon], [north, lon]], style));
        const shown = ((lon + 540) % 360) - 180;
        layer.addLayer(label([b.getSouth(), lon], Math.abs(shown).toFixed(decimals) + "°" + (shown >= 0 ? "E" : "W"), [-14, 16]));
      }
    }
    function label(at, text, anchor) {
      const icon = L.divIcon({ className: "grid-label", html: text, iconSize: null, iconAnchor: anchor });
      return L.marker(at, { icon, interactive: false, keyboard: false });
    }
    map.on("moveend", draw);
    draw();
  }

  // TopoJSON arcs are quantized and delta-encoded; each arc is drawn once (shared borders too).
  function coastlines(map, renderer) {
    fetch("static/vendor/world-atlas/countries-50m.json")
      .then((r) => r.json())
      .then((topo) => {
        const [sx, sy] = topo.transform.scale, [tx, ty] = topo.transform.translate;
        const lines = topo.arcs.map((arc) => {
          let x = 0, y = 0;
          return arc.map(([dx, dy]) => { x += dx; y += dy; return [y * sy + ty, x * sx + tx]; });
        });
        L.polyline(lines, { color: "#4f6b80", weight: 1, opacity: 0.9, interactive: false, renderer }).addTo(map);
      })
      .catch((err) => console.warn("basemap: coastlines not loaded", err));
  }

  return { grid, coastlines };
})();
