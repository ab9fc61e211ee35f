// Small SVG charts for the console: lines over time, grouped bars, horizontal bars.
// No library: the console ships as plain files and draws a few dozen points at most.
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const H = 170, PAD = { l: 44, r: 8, t: 8, b: 22 };
  let W = 460; // each chart is drawn at its container's width, so its text is not scaled

  function measure(container) {
    W = Math.max(220, Math.round(container.clientWidth) || 460);
  }

  function el(name, attrs, text) {
    const node = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function frame(container) {
    measure(container);
    const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, class: "svg-chart" });
    container.replaceChildren(svg);
    return svg;
  }

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function axes(svg, max, labels) {
    const h = H - PAD.t - PAD.b;
    for (let i = 0; i <= 4; i++) {
      const y = PAD.t + h - (h * i) / 4;
      svg.append(el("line", { x1: PAD.l, x2: W - PAD.r, y1: y, y2: y, class: "grid" }));
      svg.append(el("text", { x: PAD.l - 4, y: y + 3, class: "tick", "text-anchor": "end" }, fmt((max * i) / 4)));
    }
    const w = W - PAD.l - PAD.r;
    const every = Math.max(1, Math.ceil(labels.length / 8));
    labels.forEach((label, i) => {
      if (i % every && i !== labels.length - 1) return;
      const x = PAD.l + (labels.length === 1 ? w / 2 : (w * i) / (labels.length - 1));
      const anchor = labels.length > 1 && i === 0 ? "start" : labels.length > 1 && i === labels.length - 1 ? "end" : "middle";
      svg.append(el("text", { x, y: H - 6, class: "tick", "text-anchor": anchor }, label));
    });
  }

  function fmt(v) {
    if (v >= 1000) return `${Math.round(v / 100) / 10}k`;
    return String(v < 10 ? Math.round(v * 100) / 100 : Math.round(v));
  }

  function empty(container, text) {
    const p = document.createElement("p");
    p.className = "muted chart-empty";
    p.textContent = text;
    container.replaceChildren(p);
  }

  // series: [{values: [number|null], cls}] sharing the x labels.
  function lines(container, labels, series) {
    if (!labels.length) return empty(container, "waiting for samples…");
    const svg = frame(container);
    const max = niceMax(Math.max(0, ...series.flatMap((s) => s.values.filter((v) => v !== null))));
    axes(svg, max, labels);
    const w = W - PAD.l - PAD.r, h = H - PAD.t - PAD.b;
    const x = (i) => PAD.l + (labels.length === 1 ? w / 2 : (w * i) / (labels.length - 1));
    const y = (v) => PAD.t + h - (h * v) / max;
    for (const s of series) {
      let d = "";
      s.values.forEach((v, i) => {
        if (v === null) return;
        d += `${d && s.values[i - 1] !== null ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
      });
      svg.append(el("path", { d, class: `line ${s.cls}` }));
      s.values.forEach((v, i) => {
        if (v !== null) svg.append(el("circle", { cx: x(i), cy: y(v), r: 2.5, class: `dot ${s.cls}` }));
      });
    }
  }

  // groups: [{label, values: [number|null]}], one bar per value, classes by position.
  function bars(container, groups, classes) {
    if (!groups.length) return empty(container, "no turn yet");
    const svg = frame(container);
    const max = niceMax(Math.max(0, ...groups.flatMap((g) => g.values.filter((v) => v !== null))));
    axes(svg, max, []);
    const w = W - PAD.l - PAD.r, h = H - PAD.t - PAD.b;
    const slot = w / groups.length;
    const bw = Math.min(14, (slot * 0.8) / classes.length);
    groups.forEach((g, i) => {
      const x0 = PAD.l + slot * i + (slot - bw * classes.length) / 2;
      g.values.forEach((v, j) => {
        if (v === null) return;
        const bh = (h * v) / max;
        const bar = el("rect", { x: x0 + j * bw, y: PAD.t + h - bh, width: bw - 1, height: Math.max(bh, 0.5), class: `bar ${classes[j]}` });
        bar.append(el("title", {}, `${g.label}: ${Math.round(v)} ms`));
        svg.append(bar);
      });
      if (groups.length <= 16 || i % Math.ceil(groups.length / 16) === 0) {
        svg.append(el("text", { x: PAD.l + slot * (i + 0.5), y: H - 6, class: "tick", "text-anchor": "middle" }, g.label));
      }
    });
  }

  // entries: [[label, value]] as horizontal bars with their values.
  function hbars(container, entries, cls) {
    if (!entries.length) return empty(container, "nothing yet");
    measure(container);
    const rows = entries.slice(0, 8);
    const rowH = 20, height = rows.length * rowH + 4, left = 110;
    const svg = el("svg", { viewBox: `0 0 ${W} ${height}`, class: "svg-chart" });
    container.replaceChildren(svg);
    const max = Math.max(...rows.map((r) => r[1]), 1);
    rows.forEach(([label, value], i) => {
      const y = 2 + i * rowH;
      svg.append(el("text", { x: left - 6, y: y + 13, class: "tick label", "text-anchor": "end" }, label));
      const width = ((W - left - 50) * value) / max;
      svg.append(el("rect", { x: left, y: y + 2, width: Math.max(width, 1), height: rowH - 6, class: `bar ${cls}` }));
      svg.append(el("text", { x: left + width + 4, y: y + 13, class: "tick" }, fmt(value)));
    });
  }

  return { lines, bars, hbars };
})();
