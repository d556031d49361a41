"use strict";
// Attention patterns: a layer x head grid of thumbnails (click one), and the chosen head's pattern with the
// prompt's tokens on both axes (rows: queries, columns: keys); hovering a cell shows query, key and weight.
MX.views.attention = function (root, d) {
  const T = d.tokens.length;
  const values = MX.unpack(d.values);
  const size = d.causal ? (T * (T + 1)) / 2 : T * T;
  const bases = [];
  let offset = 0;
  d.layers.forEach((_, li) => {
    bases.push([]);
    for (let h = 0; h < d.heads[li]; h++, offset += size) bases[li].push(offset);
  });
  const masked = (q, k) => d.causal && k > q;
  const index = (q, k) => (d.causal ? (q * (q + 1)) / 2 + k : q * T + k);
  const weight = (li, h, q, k) => (masked(q, k) ? 0 : values.get(bases[li][h] + index(q, k)));

  // a head's pattern as an S x S picture (S = T for the big view, scaled up without smoothing; thumbnails of
  // long prompts sample every (T / S)-th query and key)
  function picture(li, h, S) {
    const canvas = MX.el("canvas");
    canvas.width = S;
    canvas.height = S;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(S, S);
    for (let y = 0; y < S; y++) {
      const q = Math.floor((y * T) / S);
      for (let x = 0; x < S; x++) {
        const k = Math.floor((x * T) / S);
        const rgb = masked(q, k) ? [236, 238, 241] : MX.sequential(weight(li, h, q, k));
        const p = 4 * (y * S + x);
        img.data[p] = rgb[0];
        img.data[p + 1] = rgb[1];
        img.data[p + 2] = rgb[2];
        img.data[p + 3] = 255;
      }
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }
  const THUMB = Math.min(T, 128);

  const panels = MX.el("div", "panels");
  const left = MX.el("div", "panel");
  const right = MX.el("div", "panel");
  panels.append(left, right);
  root.append(panels);

  // ---- head picker
  left.append(MX.el("h2", null, "Heads (layer \u00d7 head): click one"));
  const maxHeads = Math.max(...d.heads);
  const picker = MX.el("div", "heads");
  picker.style.gridTemplateColumns = "max-content repeat(" + maxHeads + ", 42px)";
  picker.append(MX.el("div"));
  for (let h = 0; h < maxHeads; h++) picker.append(MX.el("div", "col-label", "H" + h));
  const thumbs = [];
  d.layers.forEach((layer, li) => {
    picker.append(MX.el("div", "row-label", "L" + layer));
    thumbs.push([]);
    for (let h = 0; h < maxHeads; h++) {
      if (h >= d.heads[li]) {
        picker.append(MX.el("div"));
        continue;
      }
      const thumb = picture(li, h, THUMB);
      thumb.className = "head-thumb";
      thumb.dataset.layer = layer;
      thumb.dataset.head = h;
      thumb.title = "layer " + layer + ", head " + h;
      thumb.addEventListener("click", () => select(li, h));
      picker.append(thumb);
      thumbs[li].push(thumb);
    }
  });
  const scroller = MX.el("div", "scroll");
  scroller.append(picker);
  left.append(scroller);

  // ---- the chosen head's pattern
  const title = MX.el("h2", "pattern-title");
  right.append(title);
  MX.legend(right, MX.sequential, 0, 1, "attention weight", 1);
  const cell = T <= 160 ? Math.max(12, Math.min(28, Math.floor(720 / T))) : Math.max(3, Math.floor(1920 / T));
  const font = Math.min(11, cell - 2) + "px";
  const pattern = MX.el("div", "pattern");
  pattern.style.gridTemplateColumns = "max-content max-content";
  const keys = MX.el("div", "keys");
  const queries = MX.el("div", "queries");
  const keyLabels = d.tokens.map((tok, k) => {
    const label = MX.el("div", "tok-k", MX.show(tok));
    Object.assign(label.style, { width: cell + "px", lineHeight: cell + "px", fontSize: font });
    label.dataset.pos = k;
    keys.append(label);
    return label;
  });
  const queryLabels = d.tokens.map((tok, q) => {
    const label = MX.el("div", "tok-q", MX.show(tok));
    Object.assign(label.style, { height: cell + "px", lineHeight: cell + "px", fontSize: font });
    label.dataset.pos = q;
    queries.append(label);
    return label;
  });
  const canvas = MX.el("canvas", "pattern-canvas");
  canvas.width = T * cell;
  canvas.height = T * cell;
  pattern.append(MX.el("div", "corner"), keys, queries, canvas); // labels stick to the edges while scrolling
  const box = MX.el("div", "scroll");
  box.append(pattern);
  right.append(box);

  let chosen = [0, 0];
  let lit = [];
  function select(li, h) {
    thumbs[chosen[0]][chosen[1]].classList.remove("selected");
    chosen = [li, h];
    thumbs[li][h].classList.add("selected");
    title.textContent = "Layer " + d.layers[li] + ", head " + h;
    const ctx = canvas.getContext("2d");
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(picture(li, h, T), 0, 0, T * cell, T * cell);
  }
  canvas.addEventListener("mousemove", (evt) => {
    const rect = canvas.getBoundingClientRect();
    const k = Math.floor((evt.clientX - rect.left) / cell);
    const q = Math.floor((evt.clientY - rect.top) / cell);
    if (q < 0 || k < 0 || q >= T || k >= T) return;
    lit.forEach((e) => e.classList.remove("hl"));
    lit = [queryLabels[q], keyLabels[k]];
    lit.forEach((e) => e.classList.add("hl"));
    const [li, h] = chosen;
    const w = masked(q, k) ? "0 (masked: the key comes after the query)" : MX.fmt(weight(li, h, q, k), values.digits);
    MX.tip.show(evt, "layer " + d.layers[li] + ", head " + h, [
      ["query", MX.show(d.tokens[q]), "query"],
      ["key", MX.show(d.tokens[k]), "key"],
      ["positions", q + " \u2192 " + k, "positions"],
      ["weight", w, "weight"],
    ]);
  });
  canvas.addEventListener("mouseleave", () => {
    MX.tip.hide();
    lit.forEach((e) => e.classList.remove("hl"));
  });
  select(Math.min(d.selected[0], d.layers.length - 1), d.selected[1]);
};
