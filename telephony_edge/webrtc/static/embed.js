// The embed: a floating call button that opens the web call widget in an iframe.
//
//   <script src="https://EDGE/widget/static/embed.js" data-agent-id="demo"
//           data-metadata='{"page": "pricing"}' data-label="Talk to us" async></script>
//
// The widget itself runs on the edge's origin (its offer needs no CORS); the page that
// embeds it must be one of the edge's webrtc.allowed_origins, or the browser refuses
// to show the frame (the widget's Content-Security-Policy frame-ancestors).
"use strict";
(function () {
  const me = document.currentScript;
  if (!me || !me.src) return;
  const edge = new URL(me.src).origin;
  const query = new URLSearchParams();
  try {
    const metadata = JSON.parse(me.dataset.metadata || "{}");
    for (const [k, v] of Object.entries(metadata)) query.set(k, String(v));
  } catch (e) {
    console.warn("telephony-edge embed: data-metadata is not JSON; ignored");
  }
  query.set("agent_id", me.dataset.agentId || "");
  const src = edge + "/widget?" + query.toString();

  const button = document.createElement("button");
  button.id = "telephony-edge-call-button";
  button.type = "button";
  button.textContent = me.dataset.label || "Talk to the agent";
  Object.assign(button.style, {
    position: "fixed", right: "20px", bottom: "20px", zIndex: "2147483647",
    padding: "12px 18px", border: "0", borderRadius: "24px", cursor: "pointer",
    background: "#27ae60", color: "#fff", font: "15px system-ui, sans-serif",
    boxShadow: "0 4px 14px rgba(0,0,0,.25)",
  });

  let frame = null;
  button.addEventListener("click", () => {
    if (!frame) { // created on first use; kept while hidden so a call goes on
      frame = document.createElement("iframe");
      frame.id = "telephony-edge-call-frame";
      frame.title = button.textContent;
      frame.src = src;
      frame.allow = "microphone; autoplay";
      Object.assign(frame.style, {
        position: "fixed", right: "20px", bottom: "76px", zIndex: "2147483647",
        width: "380px", height: "540px", maxWidth: "calc(100vw - 40px)",
        border: "0", borderRadius: "14px", boxShadow: "0 6px 24px rgba(0,0,0,.3)",
        background: "#f4f5f7",
      });
      document.body.appendChild(frame);
    } else {
      frame.hidden = !frame.hidden;
    }
  });

  const mount = () => document.body.appendChild(button);
  if (document.body) mount();
  else document.addEventListener("DOMContentLoaded", mount);
})();
