// The console's "Overview" tab: this instance's metrics sampled every few seconds while the tab
// is open, drawn as charts (charts.js). Loaded after console.js, whose helpers it uses.
"use strict";

const OVERVIEW_EVERY_MS = 5000;

setInterval(() => {
  if (!$("view-overview").hidden) sampleOverview();
}, OVERVIEW_EVERY_MS);

async function sampleOverview() {
  try {
    const sample = await api("/console/api/overview");
    state.samples.push(sample);
    if (state.samples.length > 120) state.samples.shift();
    renderOverview();
  } catch (err) {
    /* shown by the feed status */
  }
}

function total(counts) {
  return Object.values(counts || {}).reduce((a, b) => a + b, 0);
}

// The latency below which `q` of the observations between two cumulative histograms fall.
function quantile(older, newer, q) {
  const prev = new Map((older || []).map(([le, n]) => [le, n]));
  const buckets = newer.map(([le, n]) => [le, n - (prev.get(le) || 0)]);
  const count = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!count) return null;
  let below = 0, lower = 0;
  for (const [le, n] of buckets) {
    if (n >= q * count) {
      const upper = Number.isFinite(le) ? le : lower;
      const share = n === below ? 1 : (q * count - below) / (n - below);
      return (lower + (upper - lower) * share) * 1000;
    }
    below = n;
    lower = Number.isFinite(le) ? le : lower;
  }
  return lower * 1000;
}

function renderOverview() {
  const s = state.samples;
  const last = s[s.length - 1];
  $("ov-running").textContent = `Turns running now: ${last.running}.`;
  const labels = s.slice(1).map((x) => new Date(x.at * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" }));
  const perMinute = s.slice(1).map((x, i) => ((total(x.turns) - total(s[i].turns)) * 60) / Math.max(1, x.at - s[i].at));
  Charts.lines($("ov-turns"), labels, [{ values: perMinute, cls: "c3" }]);
  const window = (i) => s[Math.max(0, i - 12)]; // about a minute earlier
  const p50 = s.slice(1).map((x, i) => quantile(window(i + 1).firstText, x.firstText, 0.5));
  const p95 = s.slice(1).map((x, i) => quantile(window(i + 1).firstText, x.firstText, 0.95));
  Charts.lines($("ov-latency"), labels, [{ values: p50, cls: "c2" }, { values: p95, cls: "c4" }]);
  const sorted = (o) => Object.entries(o || {}).sort((a, b) => b[1] - a[1]);
  Charts.hbars($("ov-stages"), sorted(last.stages), "c2");
  Charts.hbars($("ov-errors"), sorted(last.errors), "c5");
}
