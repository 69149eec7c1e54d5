// The web call widget: one WebRTC call to the agent, no build step.
// The configuration (agent, PUBLIC key, metadata from the URL) is rendered by the edge.
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

  // What the page measured, for tests and for debugging from the console.
  const stats = (window.widgetStats = {
    state: "idle", error: null, callId: null,
    input: { frames: 0, voiced: 0, rms: 0 },
    output: { frames: 0, voiced: 0, rms: 0 },
    captions: [],
  });

  let events = null, pc = null, mic = null, ctx = null, meters = [], timer = null, history = [];

  function setState(state, text) {
    stats.state = state;
    root.dataset.state = state;
    statusEl.textContent = text;
    button.textContent = state === "live" || state === "connecting" ? "End call" : "Start call";
    button.disabled = false;
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
    stats.error = null; stats.callId = null;
    for (const side of ["input", "output"]) Object.assign(stats[side], { frames: 0, voiced: 0, rms: 0 });
    history = []; stats.captions = []; captionsEl.replaceChildren();
    setState("connecting", "Connecting…");
    try {
      ctx = new AudioContext();
      mic = await navigator.mediaDevices.getUserMedia({ audio: true });
      meter(mic, "input");
      pc = new RTCPeerConnection({ iceServers: cfg.iceServers || [] });
      mic.getTracks().forEach((t) => pc.addTrack(t, mic));
      events = pc.createDataChannel("events");
      events.addEventListener("message", caption);
      pc.addEventListener("track", (ev) => {
        const stream = ev.streams[0] || new MediaStream([ev.track]);
        remoteAudio.srcObject = stream;
        remoteAudio.play().catch(() => {});
        meter(stream, "output");
      });
      pc.addEventListener("connectionstatechange", () => {
        if (!pc) return;
        const s = pc.connectionState;
        if (s === "connected") setState("live", "Live: talk to the agent");
        else if (s === "failed") fail("the connection failed (ICE or DTLS)");
        else if (s === "disconnected") statusEl.textContent = "Connection interrupted…";
        else if (s === "closed") end("The call ended");
      });
      timer = setInterval(sample, 20);
      await pc.setLocalDescription(await pc.createOffer());
      await gathered(pc); // the edge does not trickle ICE: one complete offer
      if (!pc) return;
      const resp = await fetch(cfg.offerUrl, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: "Bearer " + cfg.publicKey },
        body: JSON.stringify({
          agent_id: cfg.agentId, metadata: cfg.metadata,
          offer: { sdp: pc.localDescription.sdp, type: pc.localDescription.type },
        }),
      });
      let body = null;
      try { body = await resp.json(); } catch (e) { body = null; }
      if (!resp.ok) throw new Error((body && body.error) || "the edge answered " + resp.status);
      if (!pc) return;
      stats.callId = body.call_id;
      await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });
    } catch (err) {
      fail(err && err.message ? err.message : err);
    }
  }

  function teardown() {
    if (timer) clearInterval(timer);
    timer = null;
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
    if (stats.state === "live" || stats.state === "connecting") end("Call ended");
    else start();
  });
  draw();
})();
