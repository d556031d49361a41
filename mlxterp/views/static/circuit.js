"use strict";
// Circuit: the best edges of edge attribution as a graph laid out by layer (embedding at the bottom, logits at
// the top); width and colour by sqrt |score| (red positive, blue negative); hover for scores; a slider sets how
// many of the best edges show.
// d.nodes: [name, role, x, y, score]; d.edges: [sender node, receiver node, score, rank], best first.
MX.views.circuit = function (root, d) {
  const colW = 64, rowH = 44, left = 64, top = 30;
  const width = left + (d.heads + 3) * colW, height = top + (d.layers + 2) * rowH;
  const px = (x) => left + (x + 1) * colW; // x = -1: the embedding's and the logits' column
  const py = (y) => top + (d.layers - y + 0.5) * rowH;

  const controls = MX.el("div", "controls");
  const slider = MX.el("input");
  Object.assign(slider, { type: "range", id: "edge-count", min: 1, max: Math.max(1, d.edges.length) });
  slider.value = d.shown;
  const count = MX.el("span", "count");
  controls.append(MX.el("label", null, "edges drawn "), slider, count);
  root.append(controls);
  MX.legend(root, (t) => MX.diverging(2 * t - 1), -d.scale, d.scale, "score", 3);

  const svg = MX.svg("svg", { class: "circuit", width: width, height: height });
  for (let layer = 0; layer < d.layers; layer++) {
    svg.append(MX.svg("line", { class: "rule", x1: px(-0.5), x2: width, y1: py(layer), y2: py(layer) }));
    svg.append(MX.svg("text", { x: 6, y: py(layer) + 4 }, "L" + layer));
  }
  for (let h = 0; h < d.heads; h++) svg.append(MX.svg("text", { x: px(h) - 8, y: top - 12 }, "H" + h));
  svg.append(MX.svg("text", { x: px(d.heads + 1) - 12, y: top - 12 }, "MLP"));
  svg.append(MX.svg("text", { x: 6, y: py(-1) + 4 }, "embed"));
  svg.append(MX.svg("text", { x: 6, y: py(d.layers) + 4 }, "logits"));

  const edges = MX.svg("g", { class: "edges" });
  const lines = [];
  for (let i = d.edges.length - 1; i >= 0; i--) { // the best edges last: drawn on top
    const [u, r, score, rank] = d.edges[i];
    const a = d.nodes[u], b = d.nodes[r];
    const rel = d.scale > 0 ? Math.sqrt(Math.abs(score) / d.scale) : 0; // sqrt: weak edges stay visible
    const line = MX.svg("line", {
      class: "edge", x1: px(a[2]), y1: py(a[3]), x2: px(b[2]), y2: py(b[3]),
      stroke: MX.css(MX.diverging(Math.sign(score) * rel)),
      "stroke-width": (0.6 + 4.4 * rel).toFixed(2), "stroke-opacity": (0.35 + 0.65 * rel).toFixed(2),
    });
    line.dataset.index = i;
    line.dataset.rank = rank;
    lines[i] = line;
    edges.append(line);
  }
  const nodes = MX.svg("g", { class: "nodes" });
  const dots = d.nodes.map((n, i) => {
    const dot = n[1] === "sender"
      ? MX.svg("circle", { class: "node sender", cx: px(n[2]), cy: py(n[3]), r: 4.5 })
      : MX.svg("rect", { class: "node receiver", x: px(n[2]) - 3, y: py(n[3]) - 3, width: 6, height: 6 });
    dot.dataset.index = i;
    nodes.append(dot);
    return dot;
  });
  svg.append(edges, nodes);

  function show(k) {
    const used = new Set();
    lines.forEach((line, i) => {
      const on = i < k;
      line.classList.toggle("off", !on);
      if (on) used.add(d.edges[i][0]).add(d.edges[i][1]);
    });
    dots.forEach((dot, i) => dot.classList.toggle("off", !used.has(i)));
    count.textContent = k + " of the best " + d.edges.length + " (" + d.total + " edges in the model)";
  }
  slider.addEventListener("input", () => show(Number(slider.value)));
  show(d.shown);

  svg.addEventListener("mousemove", (evt) => {
    const t = evt.target;
    if (t.classList.contains("edge")) {
      const [u, r, score, rank] = d.edges[Number(t.dataset.index)];
      const sender = d.nodes[u][0], receiver = d.nodes[r][0];
      return MX.tip.show(evt, sender + " \u2192 " + receiver, [
        ["sender", sender, "sender"], ["receiver", receiver, "receiver"], ["score", MX.sig(score, 6), "score"],
        ["rank", "#" + rank + " of " + d.total, "rank"]]);
    }
    if (t.classList.contains("node")) {
      const n = d.nodes[Number(t.dataset.index)];
      const what = n[1] === "sender" ? "score (its edges' sum)" : "score (its input's edges' sum)";
      return MX.tip.show(evt, n[0], [[what, MX.sig(n[4], 6), "node-score"], ["role", n[1], "role"]]);
    }
    MX.tip.hide();
  });
  svg.addEventListener("mouseleave", () => MX.tip.hide());
  const box = MX.el("div", "scroll");
  box.append(svg);
  root.append(box);
};
