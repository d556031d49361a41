"use strict";
// Patching: recovery (%) per layer and position / head, on a diverging scale centred on 0; hover for the value.
MX.views.patching = function (root, d) {
  const scale = d.scale || 1;
  MX.legend(root, (t) => MX.diverging(2 * t - 1), -scale, scale, "recovery (%)", 1);
  const scroller = MX.el("div", "scroll");
  MX.heatmap(scroller, {
    rows: d.layers.length,
    cols: d.columns.length,
    rowLabels: d.layers.map((layer) => "L" + layer),
    colLabels: d.columns,
    rowTitle: "layer",
    colTitle: d.axis,
    colour: (i, j) => (d.grid[i][j] === null ? null : MX.diverging(d.grid[i][j] / scale)),
    text: (i, j) => (d.grid[i][j] === null ? "" : MX.fmt(d.grid[i][j], 0)),
    tip: (i, j) => [
      "layer " + d.layers[i] + ", " + MX.show(d.columnTitles[j]),
      [["recovery", d.grid[i][j] === null ? "n/a" : MX.fmt(d.grid[i][j], 2) + "%", "recovery"]],
    ],
  });
  root.append(scroller);
};
