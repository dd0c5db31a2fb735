// The talk page: a Xiaozhi device in the browser.
//
// It does what the firmware does: OTA check-in (and the activation poll while the owner has not
// bound it yet), the WebSocket handshake with the device's identity and token (as query
// parameters: browsers cannot set headers), the hello, `listen` messages, the microphone as raw
// Opus packets of 60 ms at 16 kHz (protocol version 1, WebCodecs AudioEncoder), and the reply's
// Opus packets decoded (WebCodecs AudioDecoder) and played between `tts start` and `tts stop`.
// A typed message goes as `listen detect` with its text, as other browser clients send it.
// It is an MCP server with two tools, so the agent's tool calls show up here.
//
// `window.talk` holds what happened (transcripts, sentences, tool calls, audio counts), for
// tests and for anyone curious in the console.
"use strict";

const UPLINK_RATE = 16000;
const FRAME_MS = 60;
const ACTIVATION_RETRY_MS = { waiting: 3000, failed: 10000 };

const talk = {
  sessionId: "",
  connected: false,
  downlinkRate: 24000,
  downlinkFrameMs: 60,
  speaking: false,
  listenMode: null, // "auto" | "manual" while the microphone is open
  sentPackets: 0,
  uplinkFrameMs: 0,
  replyPackets: 0,
  strayPackets: 0,
  replySeconds: 0,
  replyEnergy: 0, // sum of squares of every reply sample played
  replySamples: 0,
  volume: 70,
  transcripts: [],
  sentences: [],
  toolCalls: [],
  activationCode: "",
  errors: [],
  log: [],
};
window.talk = talk;

const $ = (id) => document.getElementById(id);
let ws = null;
let mic = null; // {stream, context, node, encoder, timestamp}
let player = null; // {context, gain, decoder, nextTime, sources, timestamp}
let currentReply = null; // the bot bubble being filled
let relistenTimer = null;

// ---- small helpers ---------------------------------------------------------------------------------

function logLine(direction, text) {
  const shown = text.length > 400 ? text.slice(0, 400) + "…" : text;
  talk.log.push(`${direction} ${shown}`);
  const item = document.createElement("li");
  item.className = direction;
  item.textContent = shown;
  const list = $("log");
  list.append(item);
  while (list.children.length > 300) list.firstChild.remove();
  list.scrollTop = list.scrollHeight;
}

function setStatus(text, isError = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("error", isError);
  if (isError) talk.errors.push(text);
}

function bubble(kind, who, text) {
  const item = document.createElement("li");
  item.className = kind;
  const label = document.createElement("span");
  label.className = "who";
  label.textContent = who;
  item.append(label);
  if (text !== undefined) item.append(document.createTextNode(text));
  const list = $("conversation");
  list.append(item);
  list.scrollTop = list.scrollHeight;
  return item;
}

function stored(key, make) {
  let value = localStorage.getItem(key);
  if (!value) {
    value = make();
    localStorage.setItem(key, value);
  }
  return value;
}

function randomMac() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  bytes[0] = (bytes[0] & 0xfe) | 0x02; // a locally administered, unicast address
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join(":");
}

function field(id) {
  return $(id).value.trim();
}

function remember(id, value) {
  $(id).value = value;
  localStorage.setItem(`xiaozhi-talk.${id}`, value);
}

// ---- OTA check-in and activation ---------------------------------------------------------------------

function otaHeaders() {
  return { "Device-Id": field("device-id"), "Client-Id": field("client-id"), "Content-Type": "application/json" };
}

async function checkIn() {
  const url = field("ota-url");
  const body = {
    version: 2,
    language: navigator.language,
    mac_address: field("device-id"),
    uuid: field("client-id"),
    application: { name: "xiaozhi-trio-talk", version: "1.0.0" },
    board: { type: "browser-talk-page", name: "Talk page" },
  };
  logLine("out", `POST ${url} ${JSON.stringify(body)}`);
  let response;
  try {
    response = await fetch(url, { method: "POST", headers: otaHeaders(), body: JSON.stringify(body) });
  } catch (error) {
    setStatus(`OTA check-in failed: ${error.message} (is the URL right? another origin needs CORS)`, true);
    return;
  }
  const reply = await response.json().catch(() => ({}));
  logLine("in", `${response.status} ${JSON.stringify(reply)}`);
  if (!response.ok) {
    setStatus(`OTA check-in refused: ${reply.error || response.status}`, true);
    return;
  }
  if (reply.websocket && reply.websocket.url) remember("ws-url", reply.websocket.url);
  if (reply.websocket && reply.websocket.token) remember("token", reply.websocket.token);
  if (reply.activation) {
    talk.activationCode = reply.activation.code;
    const notice = $("activation");
    notice.hidden = false;
    notice.replaceChildren("Activation code ", Object.assign(document.createElement("code"), { textContent: reply.activation.code }),
      `: ${reply.activation.message}`);
    setStatus("Waiting for the owner to bind this page's code…");
    pollActivation(url);
  } else {
    $("activation").hidden = true;
    talk.activationCode = "";
    setStatus(reply.websocket && reply.websocket.token ? "Checked in; token received. Connect when ready." : "Checked in. Connect when ready.");
  }
}

async function pollActivation(otaUrl) {
  const url = new URL("activate", otaUrl.endsWith("/") ? otaUrl : otaUrl + "/");
  while (talk.activationCode) {
    let status = 0;
    try {
      status = (await fetch(url, { method: "POST", headers: otaHeaders(), body: "{}" })).status;
    } catch (error) {
      status = 0;
    }
    if (status === 200) {
      logLine("in", `${url.pathname}: 200, activated`);
      talk.activationCode = "";
      await checkIn();
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, status === 202 ? ACTIVATION_RETRY_MS.waiting : ACTIVATION_RETRY_MS.failed));
  }
}

// ---- the WebSocket session ------------------------------------------------------------------------------

function connect() {
  const base = field("ws-url");
  if (!base) {
    setStatus("No WebSocket URL yet: do the OTA check-in first (or type it).", true);
    return;
  }
  let url;
  try {
    url = new URL(base);
  } catch (error) {
    setStatus(`"${base}" is not a WebSocket URL (ws://HOST:8000/xiaozhi/v1/).`, true);
    return;
  }
  url.searchParams.set("device-id", field("device-id"));
  url.searchParams.set("client-id", field("client-id"));
  url.searchParams.set("protocol-version", "1");
  if (field("token")) url.searchParams.set("authorization", `Bearer ${field("token")}`);
  ensurePlayer(); // inside the click: browsers only start audio from a user gesture
  setStatus(`Connecting to ${base}…`);
  ws = new WebSocket(url);
  ws.binaryType = "arraybuffer";
  let opened = false;
  ws.onopen = () => {
    opened = true;
    send({ type: "hello", version: 1, features: { mcp: true }, transport: "websocket",
      audio_params: { format: "opus", sample_rate: UPLINK_RATE, channels: 1, frame_duration: FRAME_MS } });
  };
  ws.onmessage = (event) => {
    if (typeof event.data === "string") onText(event.data);
    else onAudio(new Uint8Array(event.data));
  };
  ws.onclose = (event) => {
    const why = opened ? `closed (${event.code}${event.reason ? " " + event.reason : ""})`
      : "refused: with auth on, check in first so the page has a token (or bind the device and check in again)";
    setStatus(`Connection ${why}.`, !opened);
    disconnected();
  };
  $("connect").disabled = true;
  $("disconnect").disabled = false;
}

function send(message) {
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  if (talk.sessionId && message.type !== "hello") message = { session_id: talk.sessionId, ...message };
  const text = JSON.stringify(message);
  if (message.type !== "mcp") logLine("out", text);
  ws.send(text);
}

function disconnected() {
  stopMic();
  stopPlayback();
  talk.connected = false;
  talk.speaking = false;
  for (const id of ["talk-auto", "talk-hold", "abort", "disconnect", "typed", "send-typed"]) $(id).disabled = true;
  $("connect").disabled = false;
  $("talk-auto").classList.remove("active");
  $("listen-state").textContent = "idle";
  ws = null;
}

function onText(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch (error) {
    logLine("in", `(not JSON) ${text}`);
    return;
  }
  if (message.type !== "mcp") logLine("in", text);
  switch (message.type) {
    case "hello":
      return onHello(message);
    case "stt":
      talk.transcripts.push(message.text);
      bubble("user", "you (as the server understood)", message.text);
      return;
    case "llm":
      $("emotion").textContent = message.text || message.emotion || "";
      return;
    case "tts":
      return onTts(message);
    case "mcp":
      return onMcp(message.payload);
    case "alert":
      setStatus(`${message.status}: ${message.message}`, true);
      return;
    default:
      return;
  }
}

function onHello(message) {
  talk.sessionId = message.session_id || "";
  const params = message.audio_params || {};
  talk.downlinkRate = params.sample_rate || 24000;
  talk.downlinkFrameMs = params.frame_duration || 60;
  talk.connected = true;
  configureDecoder();
  for (const id of ["talk-auto", "talk-hold", "abort", "typed", "send-typed"]) $(id).disabled = false;
  setStatus(`Connected: session ${talk.sessionId}. Press "Start talking" and ask something.`);
}

function onTts(message) {
  switch (message.state) {
    case "start":
      talk.speaking = true;
      clearTimeout(relistenTimer);
      currentReply = bubble("bot", "server");
      $("listen-state").textContent = "speaking";
      return;
    case "sentence_start": {
      talk.sentences.push(message.text || "");
      if (!currentReply) currentReply = bubble("bot", "server");
      const sentence = document.createElement("span");
      sentence.className = "sentence speaking";
      sentence.textContent = (currentReply.children.length > 1 ? " " : "") + (message.text || "");
      currentReply.append(sentence);
      return;
    }
    case "sentence_end":
      if (currentReply) for (const s of currentReply.querySelectorAll(".speaking")) s.classList.remove("speaking");
      return;
    case "stop":
      talk.speaking = false;
      currentReply = null;
      afterReply();
      return;
    default:
      return;
  }
}

// Like the firmware in auto mode: once the reply has played out, listen again.
function afterReply() {
  if (talk.listenMode !== "auto") {
    $("listen-state").textContent = talk.listenMode ? "listening" : "idle";
    return;
  }
  const remaining = player ? Math.max(0, player.nextTime - player.context.currentTime) : 0;
  relistenTimer = setTimeout(() => {
    if (talk.listenMode === "auto" && !talk.speaking) {
      send({ type: "listen", state: "start", mode: "auto" });
      $("listen-state").textContent = "listening";
    }
  }, remaining * 1000);
}

// ---- MCP: this page is the device's MCP server -----------------------------------------------------------

const TOOLS = [
  {
    name: "self.get_device_status",
    description: "The talk page's status: speaker volume, connection.",
    inputSchema: { type: "object", properties: {} },
    call: () => ({ audio_speaker: { volume: talk.volume }, network: { type: "browser" } }),
  },
  {
    name: "self.audio_speaker.set_volume",
    description: "Set the speaker volume (0-100) of the talk page.",
    inputSchema: { type: "object", properties: { volume: { type: "integer", minimum: 0, maximum: 100 } }, required: ["volume"] },
    call: (args) => {
      const volume = Number(args.volume);
      if (!Number.isInteger(volume) || volume < 0 || volume > 100) throw new Error("volume must be an integer 0-100");
      setVolume(volume);
      return true;
    },
  },
];

function onMcp(payload) {
  if (!payload || typeof payload.method !== "string" || typeof payload.id !== "number") return; // notifications
  const reply = (body) => send({ type: "mcp", payload: { jsonrpc: "2.0", id: payload.id, ...body } });
  const params = payload.params || {};
  switch (payload.method) {
    case "initialize":
      return reply({ result: { protocolVersion: params.protocolVersion || "2024-11-05", capabilities: { tools: {} },
        serverInfo: { name: "xiaozhi-trio-talk-page", version: "1.0.0" } } });
    case "tools/list":
      return reply({ result: { tools: TOOLS.map(({ call, ...tool }) => tool) } });
    case "tools/call": {
      const tool = TOOLS.find((t) => t.name === params.name);
      const args = params.arguments || {};
      let result;
      let failure = null;
      try {
        if (!tool) throw new Error(`Unknown tool: ${params.name}`);
        result = tool.call(args);
      } catch (error) {
        failure = error.message;
      }
      const shown = `${params.name}(${JSON.stringify(args)}) → ${failure ? "error: " + failure : JSON.stringify(result)}`;
      talk.toolCalls.push({ name: params.name, arguments: args, result: failure ? null : result, error: failure });
      bubble("tool", "tool call", shown);
      logLine("in", `mcp tools/call ${shown}`);
      if (failure) return reply({ error: { message: failure } });
      return reply({ result: { content: [{ type: "text", text: typeof result === "string" ? result : JSON.stringify(result) }], isError: false } });
    }
    default:
      return reply({ error: { message: `Method not implemented: ${payload.method}` } });
  }
}

// ---- microphone → Opus → WebSocket -----------------------------------------------------------------------

async function startMic(mode) {
  if (!window.isSecureContext || !navigator.mediaDevices || !window.AudioEncoder) {
    setStatus("The microphone needs a secure page: open it as https://, or as http://localhost (an SSH tunnel), "
      + "and a browser with WebCodecs (Chrome, Edge, Chromium).", true);
    return false;
  }
  const config = { codec: "opus", sampleRate: UPLINK_RATE, numberOfChannels: 1, bitrate: 24000,
    opus: { frameDuration: FRAME_MS * 1000, format: "opus" } };
  const support = await AudioEncoder.isConfigSupported(config);
  if (!support.supported) {
    setStatus("This browser cannot encode Opus at 16 kHz with WebCodecs.", true);
    return false;
  }
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  const context = new AudioContext({ sampleRate: UPLINK_RATE });
  await context.audioWorklet.addModule("/talk/capture-worklet.js");
  const node = new AudioWorkletNode(context, "capture", { processorOptions: { frameSamples: (UPLINK_RATE * FRAME_MS) / 1000 } });
  const mute = context.createGain();
  mute.gain.value = 0; // the worklet must be pulled by the graph; nothing is heard
  context.createMediaStreamSource(stream).connect(node);
  node.connect(mute).connect(context.destination);
  const encoder = new AudioEncoder({
    output: (chunk) => {
      const packet = new Uint8Array(chunk.byteLength);
      chunk.copyTo(packet);
      talk.uplinkFrameMs = chunk.duration / 1000; // what the encoder made: the hello promised 60
      if (ws && ws.readyState === WebSocket.OPEN) {
        ws.send(packet);
        talk.sentPackets += 1;
        $("sent-packets").textContent = talk.sentPackets;
      }
    },
    error: (error) => setStatus(`Opus encoder: ${error.message}`, true),
  });
  encoder.configure(config);
  mic = { stream, context, node, encoder, timestamp: 0 };
  node.port.onmessage = (event) => {
    // Half duplex, as the firmware in auto mode: nothing is sent while the reply plays.
    if (!mic || talk.speaking || encoder.state !== "configured") return;
    const frame = event.data;
    encoder.encode(new AudioData({ format: "f32-planar", sampleRate: UPLINK_RATE, numberOfFrames: frame.length,
      numberOfChannels: 1, timestamp: mic.timestamp, data: frame }));
    mic.timestamp += FRAME_MS * 1000;
  };
  talk.listenMode = mode;
  send({ type: "listen", state: "start", mode });
  $("listen-state").textContent = "listening";
  setStatus(mode === "auto" ? "Listening: ask something, then pause." : "Listening while you hold the button.");
  return true;
}

async function stopMic() {
  const current = mic;
  mic = null;
  talk.listenMode = null;
  clearTimeout(relistenTimer);
  if (!current) return;
  if (current.encoder.state === "configured") {
    await current.encoder.flush().catch(() => {});
    current.encoder.close();
  }
  current.stream.getTracks().forEach((track) => track.stop());
  await current.context.close();
}

async function toggleAuto() {
  const button = $("talk-auto");
  if (talk.listenMode === "auto") {
    await stopMic();
    send({ type: "listen", state: "stop" });
    button.classList.remove("active");
    button.textContent = "● Start talking";
    $("listen-state").textContent = "idle";
    setStatus("Microphone off.");
    return;
  }
  if (talk.listenMode) return;
  button.disabled = true;
  try {
    if (await startMic("auto")) {
      button.classList.add("active");
      button.textContent = "■ Stop talking";
    }
  } catch (error) {
    setStatus(`Microphone: ${error.message}`, true);
  } finally {
    button.disabled = !talk.connected;
  }
}

async function holdStart(event) {
  event.preventDefault();
  if (talk.listenMode) return;
  if (talk.speaking) send({ type: "abort", reason: "wake_word_detected" });
  try {
    await startMic("manual");
  } catch (error) {
    setStatus(`Microphone: ${error.message}`, true);
  }
}

async function holdEnd() {
  if (talk.listenMode !== "manual") return;
  await stopMic(); // flushes the encoder: every packet goes out before listen stop
  send({ type: "listen", state: "stop" });
  $("listen-state").textContent = "thinking";
}

// ---- reply audio: Opus → WebCodecs AudioDecoder → Web Audio -------------------------------------------------

function ensurePlayer() {
  if (player) {
    player.context.resume();
    return;
  }
  const context = new AudioContext();
  const gain = context.createGain();
  gain.gain.value = talk.volume / 100;
  gain.connect(context.destination);
  player = { context, gain, decoder: null, nextTime: 0, sources: new Set(), timestamp: 0 };
}

function configureDecoder() {
  if (!window.AudioDecoder) {
    setStatus("This browser has no WebCodecs AudioDecoder: replies cannot be played.", true);
    return;
  }
  ensurePlayer();
  if (player.decoder && player.decoder.state !== "closed") player.decoder.close();
  player.decoder = new AudioDecoder({ output: play, error: (error) => setStatus(`Opus decoder: ${error.message}`, true) });
  player.decoder.configure({ codec: "opus", sampleRate: talk.downlinkRate, numberOfChannels: 1 });
}

function onAudio(packet) {
  // The firmware plays audio only between tts start and tts stop.
  if (!talk.speaking || !player || !player.decoder || player.decoder.state !== "configured") {
    talk.strayPackets += 1;
    return;
  }
  talk.replyPackets += 1;
  player.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: player.timestamp, data: packet }));
  player.timestamp += talk.downlinkFrameMs * 1000;
}

function play(audioData) {
  const frames = audioData.numberOfFrames;
  const samples = new Float32Array(frames);
  audioData.copyTo(samples, { planeIndex: 0, format: "f32-planar" });
  const rate = audioData.sampleRate;
  audioData.close();
  talk.replySeconds += frames / rate;
  talk.replySamples += frames;
  for (const s of samples) talk.replyEnergy += s * s;
  $("reply-seconds").textContent = talk.replySeconds.toFixed(1);
  const { context } = player;
  const buffer = context.createBuffer(1, frames, rate);
  buffer.copyToChannel(samples, 0);
  const source = context.createBufferSource();
  source.buffer = buffer;
  source.connect(player.gain);
  player.nextTime = Math.max(player.nextTime, context.currentTime + 0.05);
  source.start(player.nextTime);
  player.nextTime += buffer.duration;
  player.sources.add(source);
  source.onended = () => player && player.sources.delete(source);
}

function stopPlayback() {
  if (!player) return;
  for (const source of player.sources) source.stop();
  player.sources.clear();
  player.nextTime = 0;
}

function setVolume(volume) {
  talk.volume = volume;
  $("volume").value = volume;
  $("volume-value").textContent = volume;
  if (player) player.gain.gain.value = volume / 100;
}

// ---- wiring -------------------------------------------------------------------------------------------------

function init() {
  const query = new URLSearchParams(location.search);
  const initial = {
    "ota-url": query.get("ota") || localStorage.getItem("xiaozhi-talk.ota-url") || new URL("/xiaozhi/ota/", location.href).href,
    "device-id": query.get("device-id") || stored("xiaozhi-talk.device-id", randomMac),
    "client-id": query.get("client-id") || stored("xiaozhi-talk.client-id", () => crypto.randomUUID()),
    "ws-url": query.get("ws") || localStorage.getItem("xiaozhi-talk.ws-url") || "",
    token: query.get("token") || localStorage.getItem("xiaozhi-talk.token") || "",
  };
  for (const [id, value] of Object.entries(initial)) {
    $(id).value = value;
    $(id).addEventListener("change", () => remember(id, field(id)));
  }
  $("check-in").addEventListener("click", checkIn);
  $("connect").addEventListener("click", connect);
  $("disconnect").addEventListener("click", () => ws && ws.close(1000, "bye"));
  $("talk-auto").addEventListener("click", toggleAuto);
  $("talk-hold").addEventListener("pointerdown", holdStart);
  for (const name of ["pointerup", "pointerleave", "pointercancel"]) $("talk-hold").addEventListener(name, holdEnd);
  $("abort").addEventListener("click", () => {
    send({ type: "abort" });
    stopPlayback();
  });
  $("volume").addEventListener("input", () => setVolume(Number($("volume").value)));
  $("type-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = field("typed");
    if (!text) return;
    stopPlayback(); // the server interrupts any reply for it
    send({ type: "listen", state: "detect", text });
    $("typed").value = "";
  });
  if (!window.isSecureContext) {
    setStatus("Not a secure page: the microphone will not open. Use https://, or http://localhost through an SSH tunnel.", true);
  }
}

init();
