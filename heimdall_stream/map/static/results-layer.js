// The results on one canvas: every ellipse and estimate point, drawn in a few batched paths.
//
// One path per style (colour and opacity) instead of one Leaflet layer per result: with 10,000
// results that is a few dozen canvas fills per redraw instead of 20,000. Positions are projected
// once, at zoom 0 (Web Mercator world pixels), so a redraw only scales and shifts them.
// Ellipses smaller than a few pixels are left to their point, and mid-sized ones are drawn with
// every 2nd to 6th vertex of their ring: the picture is the same, the work much smaller.
"use strict";

// Bounds on a redraw's work (most of it is the browser rasterizing the canvas, which in
// software rendering grows with every outline and filled area): the newest ELLIPSE_LIMIT
// ellipses in view are drawn, the older results keep their point, and above FILL_LIMIT the
// ellipses are outlines only (thousands of overlapping fills merge into one tint anyway).
const ELLIPSE_LIMIT = 2000;
const FILL_LIMIT = 1000;
// Large ellipses (fainter than this, about 25 km and more) are outlines only: filled, a handful
// of them tints the whole area and hides the precise results.
const FILL_MIN_ALPHA = 0.5;

window.HeimdallResultsLayer = L.Layer.extend({
  initialize(styleOf) {
    this._styleOf = styleOf; // item -> {colour, alpha}
    this._items = new Map(); // capture id -> item, insertion order = age
    this._pending = false;
  },

  onAdd(map) {
    this._canvas = L.DomUtil.create("canvas", "results-canvas leaflet-layer");
    this._canvas.style.pointerEvents = "none";
    map.getPanes().overlayPane.appendChild(this._canvas);
    map.on("moveend zoomend resize viewreset", this._reset, this);
    map.on("zoomstart", this._hide, this);
    this._reset();
  },

  onRemove(map) {
    map.off("moveend zoomend resize viewreset", this._reset, this);
    map.off("zoomstart", this._hide, this);
    L.DomUtil.remove(this._canvas);
  },

  // ---------------------------------------------------------------- items
  project(view) {
    const crs = L.CRS.EPSG3857;
    const p = crs.latLngToPoint(L.latLng(view.lat, view.lon), 0);
    const rings = view.rings.map((ring) => {
      const xs = new Float64Array(ring.length), ys = new Float64Array(ring.length);
      ring.forEach(([lon, lat], i) => {
        const q = crs.latLngToPoint(L.latLng(lat, lon), 0);
        xs[i] = q.x; ys[i] = q.y;
      });
      return { xs, ys };
    });
    let minX = p.x, maxX = p.x, minY = p.y, maxY = p.y;
    for (const { xs, ys } of rings) {
      for (let i = 0; i < xs.length; i++) {
        minX = Math.min(minX, xs[i]); maxX = Math.max(maxX, xs[i]);
        minY = Math.min(minY, ys[i]); maxY = Math.max(maxY, ys[i]);
      }
    }
    return { view, x: p.x, y: p.y, rings, box: [minX, minY, maxX, maxY], visible: true };
  },
  set(item) { this._items.delete(item.view.id); this._items.set(item.view.id, item); },
  get(id) { return this._items.get(id); },
  delete(id) { return this._items.delete(id); },
  oldest() { return this._items.keys().next().value; },
  count() { return this._items.size; },
  items() { return this._items.values(); },
  visibleCount() { let n = 0; for (const item of this._items.values()) n += item.visible ? 1 : 0; return n; },

  // The visible item whose point is nearest a container point, within `tolerance` pixels.
  nearest(containerPoint, tolerance) {
    const { scale, minX, minY } = this._frame();
    let best = null, bestD = tolerance * tolerance;
    for (const item of this._items.values()) {
      if (!item.visible) continue;
      const dx = item.x * scale - minX - containerPoint.x, dy = item.y * scale - minY - containerPoint.y;
      const d = dx * dx + dy * dy;
      if (d <= bestD) { best = item; bestD = d; } // later (newer) wins ties: it is drawn on top
    }
    return best;
  },

  pixelOf(item) {
    const { scale, minX, minY } = this._frame();
    return { x: item.x * scale - minX, y: item.y * scale - minY };
  },

  // ---------------------------------------------------------------- drawing
  // Redraws for new data are spaced by at least twice the last draw's duration (and 250 ms), so
  // however many results arrive, drawing takes at most about a third of the page's time.
  redraw() {
    if (this._pending || !this._map) return;
    this._pending = true;
    const wait = Math.max(250, 2 * (this._lastDrawMs || 0)) - (performance.now() - (this._lastDrawAt || 0));
    setTimeout(() => L.Util.requestAnimFrame(() => { this._pending = false; this._draw(); }), Math.max(wait, 0));
  },

  _frame() {
    const map = this._map;
    const min = map.getPixelBounds().min;
    return { scale: Math.pow(2, map.getZoom()), minX: min.x, minY: min.y };
  },

  // The ellipse's size on screen in pixels, 0 when it is out of view.
  _extent(item, scale, minX, minY, size) {
    const [x0, y0, x1, y1] = item.box;
    const left = x0 * scale - minX, top = y0 * scale - minY, right = x1 * scale - minX, bottom = y1 * scale - minY;
    if (right < 0 || bottom < 0 || left > size.x || top > size.y) return 0;
    return Math.max(right - left, bottom - top);
  },

  _hide() { this._canvas.style.visibility = "hidden"; },

  _reset() {
    const map = this._map, size = map.getSize(), ratio = window.devicePixelRatio || 1;
    L.DomUtil.setPosition(this._canvas, map.containerPointToLayerPoint([0, 0]));
    this._canvas.width = size.x * ratio;
    this._canvas.height = size.y * ratio;
    this._canvas.style.width = size.x + "px";
    this._canvas.style.height = size.y + "px";
    this._canvas.style.visibility = "visible";
    this._draw();
  },

  _draw() {
    const started = performance.now();
    this._drawItems();
    this._lastDrawAt = performance.now();
    this._lastDrawMs = this._lastDrawAt - started;
  },

  lastDrawMs() { return this._lastDrawMs || 0; },

  _drawItems() {
    const ctx = this._canvas.getContext("2d"), ratio = window.devicePixelRatio || 1;
    const size = this._map.getSize(), { scale, minX, minY } = this._frame();
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, size.x, size.y);
    const byStyle = new Map();
    for (const item of this._items.values()) {
      if (!item.visible) continue;
      const style = this._styleOf(item), key = style.colour + "|" + style.alpha.toFixed(2);
      if (!byStyle.has(key)) byStyle.set(key, { style, items: [] });
      byStyle.get(key).items.push(item);
    }
    // Newest first, the ellipses worth drawing: in view and more than a few pixels wide.
    const ellipses = new Set();
    const newestFirst = [...this._items.values()].reverse();
    for (const item of newestFirst) {
      if (ellipses.size >= ELLIPSE_LIMIT) break;
      if (item.visible && this._extent(item, scale, minX, minY, size) >= 4) ellipses.add(item);
    }
    const drawn = ellipses.size;
    for (const { style, items } of byStyle.values()) {
      ctx.beginPath();
      for (const item of items) {
        if (!ellipses.has(item)) continue;
        const extent = this._extent(item, scale, minX, minY, size);
        const stride = extent < 40 ? 6 : extent < 160 ? 3 : extent < 600 ? 2 : 1;
        for (const { xs, ys } of item.rings) {
          // No closePath(): Chromium's cost for it grows with the subpaths already in the path
          // (seconds at 10,000); the rings are closed (last vertex = first), so a lineTo closes them.
          const last = xs.length - 1;
          ctx.moveTo(xs[0] * scale - minX, ys[0] * scale - minY);
          for (let i = stride; i < last; i += stride) ctx.lineTo(xs[i] * scale - minX, ys[i] * scale - minY);
          ctx.lineTo(xs[last] * scale - minX, ys[last] * scale - minY);
        }
      }
      if (drawn <= FILL_LIMIT && style.alpha >= FILL_MIN_ALPHA) {
        ctx.globalAlpha = style.alpha * 0.2;
        ctx.fillStyle = style.colour;
        ctx.fill("nonzero");
      }
      ctx.globalAlpha = style.alpha;
      ctx.strokeStyle = style.colour;
      ctx.lineWidth = 1;
      ctx.stroke();
    }
    const byColour = new Map();
    for (const { style, items } of byStyle.values()) {
      if (!byColour.has(style.colour)) byColour.set(style.colour, []);
      byColour.get(style.colour).push(...items);
    }
    ctx.lineWidth = 0.8;
    ctx.strokeStyle = "#222";
    for (const [colour, items] of byColour) {
      ctx.beginPath();
      for (const item of items) {
        const x = item.x * scale - minX, y = item.y * scale - minY;
        if (x < -5 || y < -5 || x > size.x + 5 || y > size.y + 5) continue;
        ctx.moveTo(x + 4, y);
        ctx.arc(x, y, 4, 0, 2 * Math.PI);
      }
      ctx.globalAlpha = 0.9;
      ctx.fillStyle = colour;
      ctx.fill();
      ctx.globalAlpha = 1;
      ctx.stroke();
    }
  },
});
