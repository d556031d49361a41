"use strict";
// Logit lens: one heatmap per lens (layers x positions, last layer on top); a cell is the layer's top token at
// that position, coloured by its probability; hovering shows the top-k with probabilities.
MX.views.lens = function (root, d) {
  const panels = MX.el("div", "panels");
  root.append(panels);
  d.panels.forEach((panel, pi) => {
    const box = MX.el("div", "panel lens-panel");
    box.dataset.panel = pi;
    box.append(MX.el("h2", null, panel.name));
    MX.legend(box, MX.sequential, 0, 1, "top-1 probability", 1);
    const order = panel.layers.map((_, i) => panel.layers.length - 1 - i); // last layer first
    const scroller = MX.el("div", "scroll");
    MX.heatmap(scroller, {
      rows: order.length,
      cols: d.tokens.length,
      rowLabels: order.map((i) => "L" + panel.layers[i]),
      colLabels: d.tokens,
      rowTitle: "layer",
      colTitle: "input",
      cellWidth: 56,
      colour: (r, c) => MX.sequential(panel.probs[order[r]][c][0]),
      text: (r, c) => MX.show(d.strings[panel.top[order[r]][c][0]]),
      tip: (r, c) => {
        const li = order[r];
        const rows = [["input", MX.show(d.tokens[c]), "input"]];
        panel.top[li][c].forEach((s, k) => {
          rows.push([MX.show(d.strings[s]), MX.fmt(100 * panel.probs[li][c][k], 2) + "%", "top" + k]);
        });
        return [panel.name + ": layer " + panel.layers[li] + ", position " + c, rows];
      },
    });
    box.append(scroller);
    panels.append(box);
  });
};
