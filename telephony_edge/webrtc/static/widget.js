// The web call widget: one WebRTC call to the agent, no build step.
// The configuration (agent, PUBLIC key, metadata from the URL) is rendered by the edge.
//
// A call outlives its worker: each answer carries the call's resume token. When the
// connection fails (no audio from the edge, which sends a frame every 20 ms, or ICE
// disconnected/failed, for STALL_MS; or the data channel closes) and the edge did not
// say the call is over ({"type": "hangup"}), the page re-offers to the same URL (any
// worker behind it) with {resume: {call_id, token}} and the call goes on. The edge's
// {"type": "move"} (a worker draining) re-offers at once.
"use strict";
(function () {
  const cfg = JSON.parse(document.getElementById("widget-config").textContent);
  const root = document.querySelector(".widget");
  const statusEl = document.getElementById("status");
  const button = document.getElementById("toggle");
  const remoteAudio = document.getElementById("remote");
  const canvas = document.getElementById("audiogram");
  const captionsEl = document.getElementById("captions");
  const keypad = document.getElementById("keypad");
  const MAX_CAPTIONS = 6;
  const g = canvas.getContext("2d");
  const VOICED_RMS = 0.01; // about -40 dBFS
  const GATHER_TIMEOUT_MS = 10000;
  const STALL_MS = 1000; // no audio or no ICE this long: the worker is gone, re-offer
  const RECONNECT_MS = 5000; // a re-offered connection with no audio this long: try again
  const WATCH_MS = 200;
  const RESUME_TRIES = 8; // re-offers before giving up (503 from a draining worker: the next)
  const RESUME_BACKOFF_MS = 250;

  // What the page measured, for tests and for debugging from the console.
  const stats = (window.widgetStats = {
    state: "idle", error: null, callId: null,
    input: { frames: 0, voiced: 0, rms: 0 },
    output: { frames: 0, voiced: 0, rms: 0 },
    captions: [], resumes: 0, gapsMs: [],
  });

  let events = null, pc = null, mic = null, ctx = null, meters = [], timer = null, history = [];
  let resume = null, over = false, watch = null, moving = false;
  let heard = { packets: -1, at: 0 }, badSince = 0;

  function setState(state, text) {
    stats.state = state;
    root.dataset.state = state;
    statusEl.textContent = text;
    button.textContent = inCall() ? "End call" : "Start call";
    button.disabled = false;
  }

  function inCall() {
    return ["live", "connecting", "reconnecting"].includes(stats.state);
  }

  function fail(reason) {
    stats.error = String(reason);
    teardown();
    setState("error", "Error: " + stats.error);
  }

  function meter(stream, side) {
    const source = ctx.createMediaStreamSource(stream);
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 1024;
    source.connect(analyser);
    meters.push({ analyser, side, buf: new Float32Array(analyser.fftSize) });
  }

  function sample() {
    const levels = { input: 0, output: 0 };
    for (const m of meters) {
      m.analyser.getFloatTimeDomainData(m.buf);
      let sum = 0;
      for (let i = 0; i < m.buf.length; i++) sum += m.buf[i] * m.buf[i];
      const rms = Math.sqrt(sum / m.buf.length);
      const s = stats[m.side];
      s.frames += 1; s.rms = rms; if (rms > VOICED_RMS) s.voiced += 1;
      levels[m.side] = rms;
    }
    history.push(levels);
    if (history.length > canvas.width / 3) history.shift();
    draw();
  }

  function draw() {
    const w = canvas.width, h = canvas.height, mid = h / 2;
    g.fillStyle = "#101418"; g.fillRect(0, 0, w, h);
    g.fillStyle = "#2d3436"; g.fillRect(0, mid, w, 1);
    history.forEach((lv, i) => {
      const x = i * 3;
      const you = Math.min(mid - 2, Math.sqrt(lv.input) * mid * 1.6);
      const agent = Math.min(mid - 2, Math.sqrt(lv.output) * mid * 1.6);
      g.fillStyle = "#2f80ed"; g.fillRect(x, mid - you, 2, you);
      g.fillStyle = "#27ae60"; g.fillRect(x, mid + 1, 2, agent);
    });
  }

  // Captions: {"type": "transcript"|"response_text", "text", "final"} on the data channel.
  function caption(ev) {
    let msg = null;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    if (msg && (msg.type === "hangup" || msg.type === "move")) {
      if (ev.target !== events) return; // a connection the call has left (a worker let go)
      if (msg.type === "hangup") over = true; // a normal end: never resume
      else reoffer("the worker moves the call");
      return;
    }
    const who = { transcript: "You", response_text: "Agent" }[msg && msg.type];
    if (!who || typeof msg.text !== "string" || !msg.text) return;
    const last = stats.captions[stats.captions.length - 1];
    if (last && last.who === who && !last.final) Object.assign(last, { text: msg.text, final: msg.final });
    else stats.captions.push({ who, text: msg.text, final: msg.final });
    if (stats.captions.length > 50) stats.captions.shift();
    captionsEl.replaceChildren(...stats.captions.slice(-MAX_CAPTIONS).map((c) => {
      const line = document.createElement("p");
      line.className = c.who === "You" ? "you" : "agent";
      line.textContent = c.who + ": " + c.text;
      return line;
    }));
    captionsEl.scrollTop = captionsEl.scrollHeight;
  }

  function gathered(conn) {
    if (conn.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { if (conn.iceGatheringState === "complete") resolve(); };
      conn.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, GATHER_TIMEOUT_MS); // send what we have
    });
  }

  async function start() {
    stats.error = null; stats.callId = null; stats.resumes = 0; stats.gapsMs = [];
    for (const side of ["input", "output"]) Object.assign(stats[side], { frames: 0, voiced: 0, rms: 0 });
    history = []; stats.captions = []; captionsEl.replaceChildren();
    resume = null; over = false; moving = false;
    setState("connecting", "Connecting…");
    try {
      ctx = new AudioContext();
      mic = await navigator.mediaDevices.getUserMedia({ audio: true });
      meter(mic, "input");
      timer = setInterval(sample, 20);
      const body = await connect(null);
      if (body) stats.callId = body.call_id;
    } catch (err) {
      fail(err && err.message ? err.message : err);
    }
  }

  // One peer connection and its offer (with the resume token when it brings the call
  // back); the edge's answer body, or null when the call was ended meanwhile.
  async function connect(resuming) {
    const conn = (pc = new RTCPeerConnection({ iceServers: cfg.iceServers || [] }));
    mic.getTracks().forEach((t) => conn.addTrack(t, mic));
    const channel = (events = conn.createDataChannel("events"));
    channel.addEventListener("message", caption);
    channel.addEventListener("close", () => { if (conn === pc) reoffer("the data channel closed"); });
    conn.addEventListener("track", (ev) => {
      const stream = ev.streams[0] || new MediaStream([ev.track]);
      remoteAudio.srcObject = stream;
      remoteAudio.play().catch(() => {});
      meters = meters.filter((m) => m.side !== "output");
      meter(stream, "output");
    });
    conn.addEventListener("connectionstatechange", () => {
      if (conn !== pc) return;
      const s = conn.connectionState;
      if (s === "connected") setState("live", "Live: talk to the agent");
      else if (s === "failed" && stats.state === "connecting") fail("the connection failed (ICE or DTLS)");
      else if (s === "disconnected") statusEl.textContent = "Connection interrupted…";
      else if (s === "closed") end("The call ended");
    });
    await conn.setLocalDescription(await conn.createOffer());
    await gathered(conn); // the edge does not trickle ICE: one complete offer
    if (conn !== pc) return null;
    const offer = {
      agent_id: cfg.agentId, metadata: cfg.metadata,
      offer: { sdp: conn.localDescription.sdp, type: conn.localDescription.type },
    };
    if (resuming) offer.resume = resuming;
    const resp = await fetch(cfg.offerUrl, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: "Bearer " + cfg.publicKey },
      body: JSON.stringify(offer),
    });
    let body = null;
    try { body = await resp.json(); } catch (e) { body = null; }
    if (!resp.ok) {
      const error = new Error((body && body.error) || "the edge answered " + resp.status);
      error.status = resp.status;
      throw error;
    }
    if (conn !== pc) return null;
    if (body.resume_token) resume = { call_id: body.call_id, token: body.resume_token };
    await conn.setRemoteDescription({ sdp: body.sdp, type: body.type });
    heard = { packets: -1, at: performance.now() }; badSince = 0;
    if (!watch) watch = setInterval(watchdog, WATCH_MS);
    return body;
  }

  // The worker is gone when the edge's audio stops (it sends a frame every 20 ms) or ICE
  // stays disconnected/failed, for STALL_MS (a re-offered connection: RECONNECT_MS to come).
  async function watchdog() {
    const conn = pc;
    if (!conn || moving || (stats.state !== "live" && stats.state !== "reconnecting")) return;
    const limit = stats.state === "live" ? STALL_MS : RECONNECT_MS;
    const now = performance.now();
    let packets = 0;
    try {
      (await conn.getStats()).forEach((r) => {
        if (r.type === "inbound-rtp" && r.kind === "audio") packets += r.packetsReceived || 0;
      });
    } catch (e) { return; }
    if (conn !== pc) return;
    if (packets !== heard.packets) heard = { packets, at: now };
    const ice = conn.connectionState;
    badSince = ice === "disconnected" || ice === "failed" ? badSince || now : 0;
    if (now - heard.at >= limit || (badSince && now - badSince >= limit)) {
      reoffer("no audio from the edge for " + Math.round(now - Math.min(heard.at, badSince || now)) + " ms");
    }
  }

  // Bring the call back through any worker with its resume token; a normal end never.
  async function reoffer(why) {
    if (moving || !pc) return;
    if (over || !resume) { end("The call ended"); return; }
    moving = true;
    const lost = heard.at || performance.now();
    setState("reconnecting", "Reconnecting…");
    console.info("telephony-edge widget: re-offering (" + why + ")");
    // the old connection closes only once the call is back: a worker that is still alive
    // (the path failed, not the worker) would take its close for the caller hanging up
    const old = pc; pc = null; events = null;
    try {
      for (let attempt = 0; attempt < RESUME_TRIES && mic; attempt++) {
        try {
          const body = await connect(resume);
          if (!body) return;
          stats.resumes += 1;
          waitLive(lost);
          moving = false;
          return;
        } catch (err) {
          if (pc) { const p = pc; pc = null; p.close(); }
          if (err && (err.status === 403 || err.status === 404 || err.status === 409)) break;
          await new Promise((r) => setTimeout(r, RESUME_BACKOFF_MS * (attempt + 1)));
        }
      }
      moving = false;
      if (mic) end("The call ended (the edge could not resume it)");
    } finally {
      old.close();
    }
  }

  // The caller-side gap: from the last audio heard to the first of the new connection.
  async function waitLive(lost) {
    const conn = pc;
    while (conn === pc && conn) {
      let packets = 0;
      try {
        (await conn.getStats()).forEach((r) => {
          if (r.type === "inbound-rtp" && r.kind === "audio") packets += r.packetsReceived || 0;
        });
      } catch (e) { return; }
      if (packets > 0) { stats.gapsMs.push(Math.round(performance.now() - lost)); return; }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  function teardown() {
    if (timer) clearInterval(timer);
    if (watch) clearInterval(watch);
    timer = null; watch = null; resume = null;
    if (events && events.readyState === "open") events.send(JSON.stringify({ type: "end" }));
    events = null;
    if (pc) { const p = pc; pc = null; p.close(); }
    if (mic) { mic.getTracks().forEach((t) => t.stop()); mic = null; }
    if (ctx) { ctx.close().catch(() => {}); ctx = null; }
    meters = [];
    remoteAudio.srcObject = null;
  }

  function end(text) {
    teardown();
    setState("ended", text);
  }

  // Keys go to the agent as DTMF over the data channel (aiortc has no RFC 4733).
  for (const digit of "123456789*0#") {
    const key = document.createElement("button");
    key.type = "button"; key.textContent = digit; key.dataset.digit = digit;
    key.addEventListener("click", () => {
      if (events && events.readyState === "open") events.send(JSON.stringify({ type: "dtmf", digit }));
    });
    keypad.appendChild(key);
  }

  button.addEventListener("click", () => {
    if (inCall()) end("Call ended");
    else start();
  });
  draw();
})();
