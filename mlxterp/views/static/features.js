"use strict";
// Feature page: the feature's top-activating contexts (tokens coloured by its activation, the context's token
// outlined; hover: token and activation), the density histogram of the dictionary's features (this feature's
// bin marked), and the tokens its decoder row promotes and suppresses through the unembedding.
MX.views.features = function (root, d) {
  const panels = MX.el("div", "panels");
  root.append(panels);
  const left = MX.el("div", "panel feature-contexts");
  panels.append(left);
  const high = Math.max(0, ...d.contexts.map((c) => c.activation)) || 1;
  left.append(MX.el("h2", null, "Top contexts (" + d.contexts.length + ")"));
  MX.legend(left, MX.sequential, 0, high, "activation", 3);
  if (!d.contexts.length) left.append(MX.el("p", "empty-note", "This feature is never active on these prompts."));
  d.contexts.forEach((c, r) => {
    const line = MX.el("div", "context");
    line.dataset.row = r;
    line.append(MX.el("span", "context-value", MX.fmt(c.activation, 3)));
    c.tokens.forEach((tok, k) => {
      if (tok === null) return;
      const span = MX.el("span", "tok ctx" + (k === d.before ? " centre" : ""), MX.show(tok));
      span.dataset.row = r;
      span.dataset.k = k;
      const v = c.values[k];
      if (v !== null && v > 0) {
        const rgb = MX.sequential(v / high);
        span.style.background = MX.css(rgb);
        span.style.color = MX.ink(rgb);
      }
      line.append(span);
    });
    line.addEventListener("mousemove", (evt) => {
      const span = evt.target.closest(".tok.ctx");
      if (!span) return MX.tip.hide();
      const k = Number(span.dataset.k), v = c.values[k];
      MX.tip.show(evt, "prompt " + c.prompt + ", position " + (c.position + k - d.before), [
        ["token", MX.show(c.tokens[k]), "token"],
        ["activation", v === null ? "n/a (not evaluated)" : Number(v).toPrecision(6), "activation"],
      ]);
    });
    line.addEventListener("mouseleave", () => MX.tip.hide());
    left.append(line);
  });
  const right = MX.el("div", "panel feature-side");
  panels.append(right);
  MX.views.features.histogram(right, d.histogram);
  if (d.effects) MX.views.features.effects(right, d.effects);
};

MX.views.features.histogram = function (parent, h) {
  parent.append(MX.el("h2", null, "Density of every feature (log10 of the fraction of tokens)"));
  const box = MX.el("div", "histogram");
  const top = Math.max(1, ...h.counts);
  h.counts.forEach((n, b) => {
    const bar = MX.el("div", "bin" + (b === h.mine ? " mine" : ""));
    bar.style.height = Math.round((100 * n) / top) + "%";
    bar.dataset.bin = b;
    box.append(bar);
  });
  box.addEventListener("mousemove", (evt) => {
    const bar = evt.target.closest(".bin");
    if (!bar) return MX.tip.hide();
    const b = Number(bar.dataset.bin);
    MX.tip.show(evt, "log10 density " + MX.fmt(h.edges[b], 2) + " to " + MX.fmt(h.edges[b + 1], 2), [
      ["features", String(h.counts[b]), "count"],
      ["this feature", b === h.mine ? "here" : "", "mine"],
    ]);
  });
  box.addEventListener("mouseleave", () => MX.tip.hide());
  parent.append(box);
  const axis = MX.el("div", "histogram-axis");
  if (h.edges.length) {
    axis.append(MX.el("span", null, MX.fmt(h.edges[0], 1)), MX.el("span", null, MX.fmt(h.edges[h.edges.length - 1], 1)));
  }
  parent.append(axis, MX.el("div", "dead-note", h.dead + " features never active"));
};

MX.views.features.effects = function (parent, e) {
  parent.append(MX.el("h2", null, "Logit effects (decoder row through the final norm and unembedding)"));
  const table = MX.el("div", "effects");
  for (const name of ["promoted", "suppressed"]) {
    const col = MX.el("div", "effects-col " + name);
    col.append(MX.el("div", "effects-title", name));
    const scale = Math.max(1e-9, ...e[name].map((p) => Math.abs(p[1])));
    e[name].forEach(([tok, v], i) => {
      const row = MX.el("div", "effect");
      row.dataset.kind = name;
      row.dataset.i = i;
      const bar = MX.el("span", "effect-bar");
      bar.style.width = Math.round((60 * Math.abs(v)) / scale) + "px";
      row.append(MX.el("span", "tok effect-token", MX.show(tok)), bar, MX.el("span", "effect-value", MX.fmt(v, 3)));
      col.append(row);
    });
    table.append(col);
  }
  parent.append(table);
};
