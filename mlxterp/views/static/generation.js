"use strict";
// Generation: each row's prompt (grey) and its new tokens, coloured by a per-step value; hover for the value.
MX.views.generation = function (root, d) {
  const diverging = d.low < 0 && d.high > 0;
  const bound = Math.max(Math.abs(d.low), Math.abs(d.high)) || 1;
  const span = d.high - d.low || 1;
  const colour = (v) => (diverging ? MX.diverging(v / bound) : MX.sequential((v - d.low) / span));
  const coloured = d.rows.some((row) => row.values);
  if (coloured) {
    if (diverging) MX.legend(root, (t) => MX.diverging(2 * t - 1), -bound, bound, d.label, 3);
    else MX.legend(root, MX.sequential, d.low, d.high, d.label, 3);
  }
  d.rows.forEach((row, r) => {
    const box = MX.el("div", "gen-row");
    box.dataset.row = r;
    box.append(MX.el("div", "row-title", "row " + r + " (" + row.tokens.length + " new tokens, stopped: " + row.reason + ")"));
    const line = MX.el("div", "gen-text");
    row.prompt.forEach((tok) => line.append(MX.el("span", "tok prompt", tok)));
    row.tokens.forEach((tok, k) => {
      const span = MX.el("span", "tok gen", tok);
      span.dataset.row = r;
      span.dataset.step = k;
      const v = row.values ? row.values[k] : null;
      if (v !== null && v !== undefined) {
        const rgb = colour(v);
        span.style.background = MX.css(rgb);
        span.style.color = MX.ink(rgb);
      }
      line.append(span);
    });
    line.addEventListener("mousemove", (evt) => {
      const span = evt.target.closest(".tok.gen");
      if (!span) return MX.tip.hide();
      const k = Number(span.dataset.step);
      const rows = [["token", MX.show(row.tokens[k]), "token"], ["id", String(row.ids[k]), "id"]];
      if (row.values) {
        const v = row.values[k];
        rows.push([d.label, v === null || v === undefined ? "n/a" : Number(v).toPrecision(6), "value"]);
      }
      MX.tip.show(evt, "row " + r + ", step " + k, rows);
    });
    line.addEventListener("mouseleave", () => MX.tip.hide());
    box.append(line);
    root.append(box);
  });
};
