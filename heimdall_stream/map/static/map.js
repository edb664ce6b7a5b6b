// The live map: receivers, and each result as its estimate point and ellipse, fed by the
// server's event stream. The page keeps at most `keep` results (the oldest leave first), so it
// stays responsive however long it is open.
"use strict";

(function () {
  const AGE_COLOURS = [[10, "#d7301f"], [60, "#fc8d59"], [600, "#2b8cbe"], [Infinity, "#7a8793"]];
  const BANDS = [[50e6, 54e6, "6 m"], [144e6, 148e6, "2 m"], [430e6, 440e6, "70 cm"], [1240e6, 1300e6, "23 cm"]];
  const RATE_WINDOW_S = 10;
  // A doubtful fix (the capture looked unlike the model's training): grey, whatever its age.
  const DOUBTFUL_QUALITY = 0.5, DOUBTFUL_COLOUR = "#b0b0b0";

  const map = L.map("map", { preferCanvas: true, worldCopyJump: true, zoomSnap: 0.25 });
  const basemapRenderer = L.canvas({ padding: 0.2 });
  // opacity in steps of 0.1: a handful of styles, each drawn as one path
  const layer = new HeimdallResultsLayer((item) => ({ colour: colourOf(item), alpha: Math.round(alphaOf(item.view) * 10) / 10 }));
  const byId = (id) => document.getElementById(id);
  let keep = 10000, received = 0, skewS = 0, lastFollow = 0;
  const arrivals = []; // server receive times of recent results, for the rate

  // ------------------------------------------------------------------ appearance
  // Age from the capture's time (the receive time for results that do not carry one it can read:
  // an unparseable time would make every age NaN and stop the drawing).
  function timeOf(view) {
    const captured = view.time ? Date.parse(view.time) / 1000 : NaN;
    return Number.isFinite(captured) ? captured : view.received;
  }
  function serverNow() { return Date.now() / 1000 - skewS; }
  function colourOf(item) {
    if (item.view.quality != null && item.view.quality < DOUBTFUL_QUALITY) return DOUBTFUL_COLOUR;
    const age = serverNow() - item.t;
    const step = AGE_COLOURS.find(([limit]) => age < limit) || AGE_COLOURS[AGE_COLOURS.length - 1];
    return step[1];
  }
  // Large ellipses say little and would hide the rest: the bigger, the fainter.
  function alphaOf(view) {
    const a = Math.max(view.a, 2000);
    return Math.min(0.9, Math.max(0.12, 0.9 - 0.35 * Math.log10(a / 2000)));
  }
  function bandOf(freq) {
    if (freq == null) return "unknown";
    const band = BANDS.find(([lo, hi]) => freq >= lo && freq <= hi);
    return band ? band[2] : (freq / 1e6).toFixed(0) + " MHz";
  }
  function modelOf(view) { return view.model + " v" + view.version; }
  function fmt(value, digits, unit) { return value == null ? "–" : Number(value).toFixed(digits) + unit; }
  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }
  function popupHtml(view) {
    const rows = [
      ["capture id", view.id],
      ["captured", view.time || "–"],
      ["frequency", fmt(view.freq == null ? null : view.freq / 1e6, 4, " MHz")],
      ["model", modelOf(view)],
      ["error", view.error_m == null ? "no truth known" : fmt(view.error_m / 1000, 2, " km")],
      ["latency", fmt(view.latency_ms, 0, " ms") + (view.cache ? " (cache)" : "")],
      ["position", view.lat.toFixed(5) + ", " + view.lon.toFixed(5)],
      ["ellipse " + Math.round(view.conf * 100) + " %", fmt(view.a / 1000, 2, " × ") + fmt(view.b / 1000, 2, " km")],
      ["receivers", view.rx.length + ": " + view.rx.join(", ")],
      ["quality", view.quality == null ? "–" : view.quality.toFixed(2) + (view.quality < DOUBTFUL_QUALITY ? " (doubtful)" : "")],
    ];
    const body = rows.map(([k, v]) => "<tr><th>" + escapeHtml(k) + "</th><td>" + escapeHtml(v) + "</td></tr>").join("");
    return '<div class="result-popup" data-capture-id="' + escapeHtml(view.id) + '"><table>' + body + "</table></div>";
  }

  // ------------------------------------------------------------------ results
  function visible(view) {
    const band = byId("band").value, version = byId("version").value;
    return (!band || bandOf(view.freq) === band) && (!version || modelOf(view) === version);
  }
  function addOption(select, value) {
    if (![...select.options].some((o) => o.value === value)) select.add(new Option(value, value));
  }
  function addResults(views) {
    for (const view of views) {
      const item = layer.project(view); // a result seen again (replayed, re-sent) replaces the earlier one
      item.t = timeOf(view);
      item.visible = visible(view);
      layer.set(item);
      addOption(byId("band"), bandOf(view.freq));
      addOption(byId("version"), modelOf(view));
      arrivals.push(view.received);
    }
    while (layer.count() > keep) layer.delete(layer.oldest());
    received += views.length;
    const shownViews = views.filter(visible);
    if (byId("follow").checked && shownViews.length) follow(shownViews[shownViews.length - 1]);
    layer.redraw();
    updateFigures();
  }
  function follow(view) {
    const now = performance.now();
    if (now - lastFollow < 1000) return; // at most once a second: the view must stay readable
    lastFollow = now;
    const bounds = L.latLngBounds(view.rings.flat().map(([lon, lat]) => [lat, lon]));
    if (bounds.isValid()) map.fitBounds(bounds, { maxZoom: 11, animate: false, padding: [40, 40] });
  }
  function applyFilters() {
    for (const item of layer.items()) item.visible = visible(item.view);
    layer.redraw();
    updateFigures();
  }
  function openPopup(event) {
    const item = layer.nearest(event.containerPoint, 7);
    if (item) {
      L.popup({ maxWidth: 360 }).setLatLng([item.view.lat, item.view.lon]).setContent(popupHtml(item.view)).openOn(map);
    }
  }
  function updateFigures() {
    const since = serverNow() - RATE_WINDOW_S;
    while (arrivals.length && !(arrivals[0] >= since)) arrivals.shift();
    byId("rate").textContent = (arrivals.length / RATE_WINDOW_S).toFixed(1);
    byId("received").textContent = received;
    byId("shown").textContent = layer.visibleCount();
  }

  // ------------------------------------------------------------------ the stream
  function connect() {
    const source = new EventSource("events");
    const status = byId("status");
    source.onopen = () => { status.textContent = "live"; status.className = "status live"; };
    source.onerror = () => { status.textContent = "reconnecting"; status.className = "status down"; };
    source.addEventListener("results", (event) => {
      const batch = JSON.parse(event.data);
      skewS = Date.now() / 1000 - batch.now; // the browser's clock minus the server's
      addResults(batch.results);
    });
  }

  function receivers(collection) {
    const layer = L.geoJSON(collection, {
      pointToLayer: (feature, at) => L.marker(at, {
        icon: L.divIcon({ className: "receiver-icon", html: "▲", iconSize: [15, 15], iconAnchor: [7, 9] }),
        title: feature.properties.name,
      }),
      onEachFeature: (feature, marker) => marker.bindTooltip(escapeHtml(feature.properties.name)),
    }).addTo(map);
    map.fitBounds(layer.getBounds().pad(0.6));
  }

  fetch("config.json").then((r) => r.json()).then((config) => {
    keep = config.keep;
    byId("topic").textContent = config.topic;
    receivers(config.receivers); // sets the view, which the grid needs
    HeimdallBasemap.grid(map, basemapRenderer);
    HeimdallBasemap.coastlines(map, basemapRenderer);
    if (config.tile_url) {
      L.tileLayer(config.tile_url, { attribution: config.tile_attribution, maxZoom: 18 }).addTo(map);
    }
    byId("band").onchange = applyFilters;
    byId("version").onchange = applyFilters;
    setInterval(updateFigures, 500);
    layer.addTo(map);
    map.on("click", openPopup);
    setInterval(() => layer.redraw(), 5000); // colours follow the age
    connect();
  });

  // For tests and the console: read-only views of the state, and a way to add synthetic results.
  window.heimdallMap = {
    map,
    layer,
    count: () => layer.count(),
    shown: () => layer.visibleCount(),
    received: () => received,
    addResults,
    pixelOf(id) {
      const item = layer.get(id);
      return item ? layer.pixelOf(item) : null;
    },
    focus(id, zoom) {
      const item = layer.get(id);
      if (item) map.setView([item.view.lat, item.view.lon], zoom || map.getZoom(), { animate: false });
    },
  };
})();
