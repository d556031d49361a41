"use strict";
// Shared building blocks of mlxterp's views: data, elements (HTML and SVG), tooltip, colour scales, heatmaps,
// unpacking.
// Every text reaches the page through textContent, never innerHTML, so a token such as <script> stays text.
const MX = {
  views: {},

  start() {
    try {
      const data = JSON.parse(document.getElementById("mlxterp-data").textContent);
      MX.views[data.view](document.getElementById("view"), data);
    } finally {
      window.MX_READY = performance.now(); // drawn (or failed: the error is on the console): for tests and timings
    }
  },

  el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  },

  // A token as text on one line: line breaks and tabs become visible marks, and so do the spaces of a token
  // that is nothing else (it would look empty).
  show(token) {
    const text = String(token).replace(/\n/g, "\u21b5").replace(/\r/g, "\u240d").replace(/\t/g, "\u21e5");
    return /^ +$/.test(text) ? text.replace(/ /g, "\u2423") : text;
  },

  fmt(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "n/a";
    return Number(x).toFixed(digits).replace(/^-(0(\.0+)?)$/, "$1"); // -0.3 to 0 decimals is "0", not "-0"
  },

  // x to `digits` significant digits (scores from 1e-6 to 1e3 alike)
  sig(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "n/a";
    return Number(x).toPrecision(digits);
  },

  // An SVG element with attributes (numbers and strings; text only through textContent).
  svg(tag, attrs, text) {
    const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [name, value] of Object.entries(attrs || {})) e.setAttribute(name, String(value));
    if (text !== undefined && text !== null) e.textContent = text;
    return e;
  },

  // ---- tooltip: a title and [label, value, field] rows; value cells carry data-field for tests and tools
  tip: {
    show(evt, title, rows) {
      const tip = document.getElementById("tip");
      tip.replaceChildren(MX.el("div", "tip-title", title));
      const table = MX.el("table");
      for (const [label, value, field] of rows) {
        const tr = MX.el("tr");
        const th = MX.el("th", null, label);
        const td = MX.el("td", null, value);
        if (field) {
          th.dataset.field = field + "-label";
          td.dataset.field = field;
        }
        tr.append(th, td);
        table.append(tr);
      }
      tip.append(table);
      tip.hidden = false;
      MX.tip.move(evt);
    },
    move(evt) {
      const tip = document.getElementById("tip");
      const x = Math.min(evt.clientX + 14, window.innerWidth - tip.offsetWidth - 4);
      const y = Math.min(evt.clientY + 14, window.innerHeight - tip.offsetHeight - 4);
      tip.style.left = Math.max(0, x) + "px";
      tip.style.top = Math.max(0, y) + "px";
    },
    hide() {
      document.getElementById("tip").hidden = true;
    },
  },

  // ---- colour scales: t in [0, 1] (sequential) or [-1, 1] (diverging) to an [r, g, b] triple
  sequential(t) {
    const c = Math.max(0, Math.min(1, t));
    return [Math.round(247 - 239 * c), Math.round(251 - 203 * c), Math.round(255 - 148 * c)];
  },
  diverging(t) {
    const c = Math.max(-1, Math.min(1, t));
    if (c >= 0) return [Math.round(255 - 77 * c), Math.round(255 - 231 * c), Math.round(255 - 212 * c)];
    return [Math.round(255 + 222 * c), Math.round(255 + 155 * c), Math.round(255 + 83 * c)];
  },
  css(rgb) {
    return "rgb(" + rgb[0] + "," + rgb[1] + "," + rgb[2] + ")";
  },
  ink(rgb) {
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] < 140 ? "#fff" : "#111";
  },

  // A colour bar from `low` to `high` under a label.
  legend(parent, scale, low, high, label, digits) {
    const box = MX.el("div", "legend");
    box.append(MX.el("span", "legend-label", label), MX.el("span", "legend-end", MX.fmt(low, digits)));
    const bar = MX.el("span", "legend-bar");
    const stops = [];
    for (let i = 0; i <= 10; i++) stops.push(MX.css(scale(i / 10)));
    bar.style.background = "linear-gradient(to right," + stops.join(",") + ")";
    box.append(bar, MX.el("span", "legend-end", MX.fmt(high, digits)));
    parent.append(box);
    return box;
  },

  // ---- a heatmap of DOM cells: rows x cols, labelled axes, one delegated hover handler.
  // spec: {rows, cols, rowLabels, colLabels, rowTitle, colTitle, colour(i, j) -> rgb or null,
  //        text(i, j) -> string, tip(i, j) -> [title, rows], cellWidth, cellHeight}
  heatmap(parent, spec) {
    const grid = MX.el("div", "heatmap");
    grid.style.gridTemplateColumns = "max-content repeat(" + spec.cols + ", " + (spec.cellWidth || 44) + "px)";
    grid.style.gridAutoRows = "minmax(" + (spec.cellHeight || 22) + "px, auto)";
    grid.append(MX.el("div", "corner", spec.rowTitle + " \\ " + spec.colTitle));
    spec.colLabels.forEach((label, j) => {
      const c = MX.el("div", "col-label", MX.show(label));
      c.dataset.col = j;
      grid.append(c);
    });
    for (let i = 0; i < spec.rows; i++) {
      const r = MX.el("div", "row-label", MX.show(spec.rowLabels[i]));
      r.dataset.row = i;
      grid.append(r);
      for (let j = 0; j < spec.cols; j++) {
        const cell = MX.el("div", "cell", spec.text ? spec.text(i, j) : null);
        const rgb = spec.colour(i, j);
        if (rgb) {
          cell.style.background = MX.css(rgb);
          cell.style.color = MX.ink(rgb);
        } else {
          cell.classList.add("empty");
        }
        cell.dataset.row = i;
        cell.dataset.col = j;
        grid.append(cell);
      }
    }
    grid.addEventListener("mousemove", (evt) => {
      const cell = evt.target.closest(".cell");
      if (!cell) return MX.tip.hide();
      const [title, rows] = spec.tip(Number(cell.dataset.row), Number(cell.dataset.col));
      MX.tip.show(evt, title, rows);
    });
    grid.addEventListener("mouseleave", () => MX.tip.hide());
    parent.append(grid);
    return grid;
  },

  // ---- bit-packed integers (see mlxterp/views/packing.py): returns get(i) -> value rounded to `digits`
  unpack(packed) {
    const text = atob(packed.data);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    const n = packed.n, bits = packed.bits, mask = bits >= 32 ? 0xffffffff : (1 << bits) - 1;
    const q = new Uint32Array(n);
    let acc = 0, have = 0, p = 0;
    for (let i = 0; i < n; i++) {
      while (have < bits) {
        acc |= bytes[p++] << have;
        have += 8;
      }
      q[i] = acc & mask;
      acc >>>= bits;
      have -= bits;
    }
    const scale = Math.pow(10, packed.digits), low = packed.low;
    return { q: q, low: low, scale: scale, digits: packed.digits, get: (i) => (q[i] + low) / scale };
  },
};
