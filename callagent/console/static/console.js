// The operator console: the live call feed, one call's transcript, the overview, a test softphone.
// Plain browser JavaScript, no build step. Everything shown from the server goes through
// textContent (never innerHTML): caller text is untrusted.
"use strict";

const KEY_STORAGE = "callagent-console-key";
const RECENT_MS = 10 * 60 * 1000; // calls with activity in the last ten minutes
const OVERVIEW_EVERY_MS = 5000;

const state = {
  key: sessionStorage.getItem(KEY_STORAGE) || "",
  calls: new Map(), // session -> summary
  selected: null, // session id
  turns: [], // the selected call's turns, oldest first
  pendingEvents: null, // events for the selected call that arrive while its transcript loads
  samples: [], // overview samples
};

const $ = (id) => document.getElementById(id);

function h(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

function authHeaders(extra) {
  const headers = Object.assign({}, extra || {});
  if (state.key) headers.Authorization = `Bearer ${state.key}`;
  return headers;
}

async function api(path, options) {
  const opts = Object.assign({ cache: "no-store" }, options || {});
  opts.headers = authHeaders(opts.headers);
  const res = await fetch(path, opts);
  if (res.status === 401) {
    askForKey(true);
    throw new Error("unauthorized");
  }
  const body = await res.json();
  if (!res.ok) throw new Error(body.msg || `HTTP ${res.status}`);
  return body;
}

function toast(text, bad) {
  const t = $("toast");
  t.textContent = text;
  t.className = bad ? "toast bad" : "toast";
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 4000);
}

// -- the key ------------------------------------------------------------------------------

function askForKey(rejected) {
  $("key-form").hidden = false;
  $("key-error").hidden = !rejected || !state.key;
  for (const view of document.querySelectorAll(".view")) view.hidden = true;
  $("key").focus();
}

$("key-form").addEventListener("submit", (e) => {
  e.preventDefault();
  state.key = $("key").value.trim();
  sessionStorage.setItem(KEY_STORAGE, state.key);
  $("key-form").hidden = true;
  showView("live");
  followFeed();
});

// -- views --------------------------------------------------------------------------------

function showView(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.view === name);
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${name}`;
  if (name === "overview" && !state.samples.length) {
    sampleOverview();
    setTimeout(sampleOverview, 1000); // a first point to draw without waiting a whole period
  }
}

for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showView(tab.dataset.view));

// -- the live feed (SSE read with fetch, so the key travels in a header) ---------------------

let feedRunning = false;

async function followFeed() {
  if (feedRunning) return;
  feedRunning = true;
  try {
    for (;;) {
      try {
        const res = await fetch("/console/api/feed", { headers: authHeaders(), cache: "no-store" });
        if (res.status === 401) return askForKey(true);
        if (!res.ok) throw new Error(`HTTP ${res.status}`);
        setFeedStatus("live", true);
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            for (const line of block.split("\n")) {
              if (line.startsWith("data: ")) onMessage(JSON.parse(line.slice(6)));
            }
          }
        }
      } catch (err) {
        console.warn("feed", err);
      }
      setFeedStatus("reconnecting…", false);
      await new Promise((r) => setTimeout(r, 1000));
    }
  } finally {
    feedRunning = false;
  }
}

function setFeedStatus(text, ok) {
  const s = $("feed-status");
  s.textContent = text;
  s.className = ok ? "status on" : "status off";
}

function onMessage(msg) {
  switch (msg.type) {
    case "hello":
      setFeedStatus(`live · ${msg.who} @ ${msg.instance}`, true);
      break;
    case "call":
      upsertCall(msg);
      break;
    case "action":
      if (msg.session === state.selected) addAction(msg);
      break;
    default:
      if (msg.session === state.selected) onCallEvent(msg);
  }
}

// -- the call list -------------------------------------------------------------------------

function upsertCall(msg) {
  const known = state.calls.get(msg.session);
  if (known && known.at > msg.at) return; // an older summary (a re-sent one, or another instance's)
  state.calls.set(msg.session, msg);
  if (msg.session === state.selected) renderCallHead();
  scheduleCalls();
}

let callsFrame = 0;
function scheduleCalls() {
  if (!callsFrame) callsFrame = requestAnimationFrame(renderCalls);
}

function ago(at) {
  const s = Math.max(0, Math.round(Date.now() / 1000 - at));
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m`;
}

function renderCalls() {
  callsFrame = 0;
  const now = Date.now();
  for (const [sid, c] of state.calls) if (now - c.at * 1000 > RECENT_MS) state.calls.delete(sid);
  const calls = [...state.calls.values()].sort((a, b) => b.at - a.at);
  const body = $("calls").tBodies[0];
  body.replaceChildren(
    ...calls.map((c) => {
      const row = h("tr", `call ${c.state}`);
      row.dataset.session = c.session;
      if (c.session === state.selected) row.classList.add("selected");
      const stage = c.stage ? `${c.stage} ${c.stageName || ""}` : "";
      const cells = [
        h("td", "sid", c.session),
        h("td", null),
        h("td", null, stage),
        h("td", "utterance", c.utterance),
        h("td", "num", String(c.turns)),
        h("td", "num", c.firstTextMs === null || c.firstTextMs === undefined ? "" : `${Math.round(c.firstTextMs)} ms`),
        h("td", "muted", c.instance),
        h("td", "muted", ago(c.at)),
      ];
      const badge = h("span", `state ${c.state}`, c.state);
      if (c.state === "waiting") badge.title = "waiting for the caller";
      cells[1].append(badge);
      row.append(...cells);
      row.addEventListener("click", () => selectCall(c.session));
      return row;
    })
  );
  $("calls-empty").hidden = calls.length > 0;
  $("calls-count").textContent = calls.length ? `(${calls.length})` : "";
}

setInterval(scheduleCalls, 5000); // keep "active" ages fresh and let old calls go

// -- one call -----------------------------------------------------------------------------

async function selectCall(session) {
  state.selected = session;
  state.turns = [];
  state.pendingEvents = [];
  $("call").hidden = false;
  renderCallHead();
  renderTranscript();
  scheduleCalls();
  await loadCall(session);
}

async function loadCall(session) {
  let data;
  try {
    data = await api(`/console/api/sessions/${encodeURIComponent(session)}`);
  } catch (err) {
    data = { turns: [], variables: {} };
    if (err.message !== "unauthorized") toast(`${session}: ${err.message}`, true);
  }
  if (state.selected !== session) return;
  const running = state.turns.filter((t) => t.status === "running" && !data.turns.some((d) => d.turnId === t.turnId));
  state.turns = data.turns.concat(running);
  renderVariables(data.variables);
  const pending = state.pendingEvents || [];
  state.pendingEvents = null;
  for (const msg of pending) onCallEvent(msg);
  renderTranscript();
}

function renderCallHead() {
  const c = state.calls.get(state.selected);
  $("call-session").textContent = state.selected || "";
  const st = $("call-state");
  st.textContent = c ? c.state : "";
  st.className = c ? `state ${c.state}` : "state";
}

function turnOf(turnId) {
  return state.turns.find((t) => t.turnId === turnId);
}

function onCallEvent(msg) {
  if (state.pendingEvents) return void state.pendingEvents.push(msg);
  let turn = turnOf(msg.turnId);
  if (msg.type === "turn") {
    if (!turn) {
      turn = { turnId: msg.turnId, callerText: msg.text, replyText: "", stageCodes: [], status: "running", timings: {} };
      state.turns.push(turn);
    }
    return renderTranscript();
  }
  if (!turn || (turn.status !== "running" && msg.type !== "end")) return; // known from the store already
  if (msg.type === "delta") turn.replyText += msg.text;
  else if (msg.type === "stage") turn.stageCodes.push(msg.code);
  else if (msg.type === "end") {
    turn.status = msg.status;
    turn.spokenText = msg.spokenText;
    turn.timings = msg.latency || {};
    turn.errorType = msg.error ? msg.error.type : null;
    turn.errorMsg = msg.error ? msg.error.msg : null;
    refreshVariables(state.selected);
    renderLatency();
  }
  renderTurn(turn);
}

async function refreshVariables(session) {
  try {
    const data = await api(`/console/api/sessions/${encodeURIComponent(session)}`);
    if (state.selected === session) renderVariables(data.variables);
  } catch (err) {
    /* the session may be gone (ended) */
  }
}

function renderTranscript() {
  const box = $("transcript");
  box.replaceChildren(...state.turns.map(turnNode));
  box.scrollTop = box.scrollHeight;
  renderLatency();
}

function renderTurn(turn) {
  const old = document.querySelector(`#transcript .turn[data-turn="${CSS.escape(turn.turnId)}"]`);
  if (!old) return renderTranscript();
  old.replaceWith(turnNode(turn));
  const box = $("transcript");
  box.scrollTop = box.scrollHeight;
}

function turnNode(t) {
  const failed = t.status === "failed";
  const node = h("div", `turn ${t.status}${t.deleted ? " deleted" : ""}`);
  node.dataset.turn = t.turnId;
  const caller = h("div", "caller");
  caller.append(h("span", "who", "caller"), h("span", "text", t.callerText));
  const agent = h("div", failed ? "agent failed" : "agent");
  agent.append(h("span", "who", "agent"));
  for (const code of t.stageCodes || []) agent.append(h("span", "stage", code));
  agent.append(replyNode(t));
  const meta = h("div", "meta");
  meta.append(h("span", `badge ${t.status}`, t.status === "running" ? "speaking…" : t.status));
  if (t.errorType) meta.append(h("span", "error", t.errorMsg ? `${t.errorType}: ${t.errorMsg}` : t.errorType));
  if (t.deleted) meta.append(h("span", "badge deleted", "undone"));
  const ft = t.timings && t.timings.first_text_ms;
  if (ft !== null && ft !== undefined) meta.append(h("span", "muted", `first text ${Math.round(ft)} ms`));
  node.append(caller, agent, meta);
  return node;
}

// What the caller heard is shown as spoken; the rest of what was generated is struck through.
function replyNode(t) {
  const reply = h("span", "reply");
  const generated = t.replyText || "";
  const heard = t.spokenText;
  if (heard === null || heard === undefined) {
    reply.textContent = generated;
    return reply;
  }
  if (generated.startsWith(heard)) {
    reply.append(h("span", "heard", heard), h("del", "unheard", generated.slice(heard.length)));
  } else {
    reply.append(h("del", "unheard", generated), h("span", "heard-note", ` heard: “${heard}”`));
  }
  return reply;
}

function addAction(msg) {
  const labels = { interrupt: "interrupted the turn", end: "ended the session", undo: "undid the last turn", set_variable: `set ${msg.key}` };
  const node = h("div", "action", `${msg.who} ${labels[msg.action] || msg.action} · ${new Date(msg.at * 1000).toLocaleTimeString()}`);
  $("transcript").append(node);
  if (msg.action === "set_variable" || msg.action === "undo") refreshVariables(msg.session);
}

function renderVariables(variables) {
  const body = $("variables").tBodies[0];
  const entries = Object.entries(variables || {});
  body.replaceChildren(
    ...entries.map(([k, v]) => {
      const row = h("tr");
      row.append(h("th", null, k), h("td", null, typeof v === "string" ? v : JSON.stringify(v)));
      return row;
    })
  );
  if (!entries.length) body.append(h("tr", "muted", "none yet"));
}

function renderLatency() {
  const groups = state.turns
    .filter((t) => t.timings && t.timings.total_ms)
    .map((t, i) => ({
      label: String(i + 1),
      values: [t.timings.upstream_first_byte_ms ?? null, t.timings.first_text_ms ?? null, t.timings.total_ms ?? null],
    }));
  Charts.bars($("latency"), groups, ["c1", "c2", "c3"]);
}

// -- stepping in ----------------------------------------------------------------------------

async function act(action, body) {
  const session = state.selected;
  if (!session) return;
  try {
    const opts = { method: "POST" };
    if (body) {
      opts.body = JSON.stringify(body);
      opts.headers = { "Content-Type": "application/json" };
    }
    const res = await api(`/console/api/sessions/${encodeURIComponent(session)}/${action}`, opts);
    toast(`${action.replace("_", " ")}: done${res.cancelled === false ? " (no turn was running)" : ""}`);
    if (action === "undo") loadCall(session);
  } catch (err) {
    if (err.message !== "unauthorized") toast(`${action}: ${err.message}`, true);
  }
}

$("btn-interrupt").addEventListener("click", () => act("interrupt"));
$("btn-undo").addEventListener("click", () => act("undo"));
$("btn-end").addEventListener("click", () => {
  if (confirm(`End session ${state.selected}? Its transcript and variables are deleted.`)) act("end");
});
$("var-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const raw = $("var-value").value;
  let value = raw;
  try {
    value = JSON.parse(raw);
  } catch (err) {
    /* plain text */
  }
  act("variables", { key: $("var-key").value, value });
});

// -- overview -------------------------------------------------------------------------------

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

// -- try a call: a softphone on the WebSocket API -----------------------------------------------

const phone = { ws: null, session: "", reply: null, speaking: null, heard: "" };
const Recognition = window.SpeechRecognition || window.webkitSpeechRecognition;

function newPhoneSession() {
  phone.session = `try-${Math.random().toString(36).slice(2, 10)}`;
  $("phone-session").value = phone.session;
  $("phone-log").replaceChildren();
  if (phone.ws) phone.ws.close();
  phone.ws = null;
}

function phoneLine(who, text, cls) {
  const line = h("div", `line ${cls || who}`);
  line.append(h("span", "who", who), h("span", "text", text));
  $("phone-log").append(line);
  $("phone-log").scrollTop = $("phone-log").scrollHeight;
  return line;
}

function phoneSocket() {
  if (phone.ws && phone.ws.readyState <= WebSocket.OPEN) return Promise.resolve(phone.ws);
  return new Promise((resolve, reject) => {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/console/api/ws?token=${encodeURIComponent(state.key)}`);
    ws.onopen = () => {
      ws.send(JSON.stringify({ type: "start", sessionId: phone.session }));
      resolve(ws);
    };
    ws.onerror = () => reject(new Error("the WebSocket did not open"));
    ws.onclose = () => {
      if (phone.ws === ws) phone.ws = null;
    };
    ws.onmessage = (e) => onPhoneMessage(JSON.parse(e.data));
    phone.ws = ws;
  });
}

function onPhoneMessage(msg) {
  if (msg.type === "text_delta") {
    if (!phone.reply) phone.reply = phoneLine("agent", "");
    phone.reply.querySelector(".text").textContent += msg.text;
  } else if (msg.type === "stage_code") {
    if (!phone.reply) phone.reply = phoneLine("agent", "");
    phone.reply.querySelector(".who").textContent = `agent · ${msg.nextStageCode} ${msg.nextStage}`;
  } else if (msg.type === "done") {
    const text = phone.reply ? phone.reply.querySelector(".text").textContent : "";
    phone.reply = null;
    if (msg.status === "completed" && text) speak(text);
  } else if (msg.type === "error") {
    if (phone.reply) phone.reply.classList.add("failed");
    phone.reply = null;
    phoneLine("error", `${msg.error}: ${msg.msg}`, "failed");
  }
}

function speak(text) {
  if (!$("phone-speak").checked || !window.speechSynthesis) return;
  const utterance = new SpeechSynthesisUtterance(text);
  utterance.lang = "zh-CN";
  phone.heard = "";
  utterance.onboundary = (e) => (phone.heard = text.slice(0, e.charIndex));
  utterance.onend = () => (phone.speaking = null);
  phone.speaking = utterance;
  speechSynthesis.speak(utterance);
}

// The caller talks over the agent: stop it, and say how much of the reply they heard.
function bargeIn() {
  if (!phone.ws) return;
  let heard = null;
  if (phone.reply) heard = phone.reply.querySelector(".text").textContent;
  else if (phone.speaking) heard = phone.heard;
  if (phone.speaking) speechSynthesis.cancel();
  phone.speaking = null;
  if (heard !== null) {
    phone.ws.send(JSON.stringify({ type: "interrupt", spokenText: heard }));
    phone.reply = null;
  }
}

async function say(text) {
  if (!text) return;
  phone.session = $("phone-session").value.trim() || phone.session;
  try {
    const ws = await phoneSocket();
    bargeIn();
    phoneLine("caller", text);
    ws.send(JSON.stringify({ type: "chat", text }));
  } catch (err) {
    phoneLine("error", err.message, "failed");
  }
}

$("phone-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("phone-text").value.trim();
  $("phone-text").value = "";
  say(text);
});
$("phone-stop").addEventListener("click", bargeIn);
$("phone-new").addEventListener("click", newPhoneSession);

if (Recognition) {
  $("phone-mic").hidden = false;
  $("phone-mic").addEventListener("click", () => {
    const rec = new Recognition();
    rec.lang = "zh-CN";
    rec.interimResults = false;
    rec.onstart = () => {
      $("phone-mic").classList.add("on");
      bargeIn();
    };
    rec.onend = () => $("phone-mic").classList.remove("on");
    rec.onresult = (e) => say(e.results[0][0].transcript);
    rec.start();
  });
} else {
  $("phone-mic-note").hidden = true;
}
if (!window.speechSynthesis) $("phone-speak").disabled = true;

// -- start ----------------------------------------------------------------------------------

newPhoneSession();
renderCalls();
followFeed();
