// The operator console: the live call feed, one call's transcript, the overview, a test softphone.
// Plain browser JavaScript, no build step. Everything shown from the server goes through
// textContent (never innerHTML): caller text is untrusted.
"use strict";

const KEY_STORAGE = "callagent-console-key";
const RECENT_MS = 10 * 60 * 1000; // calls with activity in the last ten minutes

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

// -- start ----------------------------------------------------------------------------------

renderCalls();
followFeed();
