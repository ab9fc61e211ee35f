// The console's "Try a call" tab: a test softphone on the WebSocket API (/console/api/ws, the
// same protocol as /ws), with the browser's speech recognition and synthesis where offered.
// Loaded after console.js, whose helpers ($, h, state) it uses.
"use strict";

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

newPhoneSession();
