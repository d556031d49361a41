"use strict";
// Direct logit attribution: each head's and MLP's contribution per layer, on a diverging scale centred on 0;
// hover for the component, its contribution and its share of the total.
MX.views.dla = function (root, d) {
  const scale = d.scale || 1;
  MX.legend(root, (t) => MX.diverging(2 * t - 1), -scale, scale, "contribution", 2);
  const scroller = MX.el("div", "scroll");
  const value = (i, j) => d.grid[i][j];
  MX.heatmap(scroller, {
    rows: d.layers.length,
    cols: d.columns.length,
    rowLabels: d.layers.map((layer) => "L" + layer),
    colLabels: d.columns,
    rowTitle: "layer",
    colTitle: "component",
    colour: (i, j) => (value(i, j) === null ? null : MX.diverging(value(i, j) / scale)),
    text: (i, j) => (value(i, j) === null ? "" : MX.fmt(value(i, j), 2)),
    tip: (i, j) => [d.names[i][j], [
      ["contribution", MX.sig(value(i, j), 6), "contribution"],
      ["share of the total", d.total ? MX.fmt((100 * value(i, j)) / d.total, 1) + "%" : "n/a", "share"]]],
  });
  root.append(scroller);
};
