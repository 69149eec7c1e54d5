"""Prometheus metrics, all named ``telephony_edge_*``.

Defined once per process in the default registry; ``/metrics`` serves them.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CALLS_ACTIVE = Gauge("telephony_edge_calls_active", "Calls bridged right now", ["provider"])
CALLS_TOTAL = Counter(
    "telephony_edge_calls_total", "Calls ended, by provider and call_status", ["provider", "status"]
)
# Calls that outlive their worker (telephony_edge.calls.live_state, .migration).
LIVE_STATE_WRITES = Counter(
    "telephony_edge_live_state_writes_total",
    "Live call states written to the coordinator for another worker to resume from (one per"
    " call and write; at most one per call every calls.live_state_interval_s)",
)
CALL_MIGRATIONS = Counter(
    "telephony_edge_call_migrations_total",
    "Live calls this worker took over from another one and brought live again, by provider"
    " and cause (crash: the worker was lost; drain: it moved its calls on SIGTERM; network:"
    " it lost the network's media connection)",
    ["provider", "cause"],
)
CALL_MIGRATION_GAP_SECONDS = Histogram(
    "telephony_edge_call_migration_gap_seconds",
    "A moved call's break (its old worker's end, or the network's word of it) to the new"
    " worker's agent onready, by provider",
    ["provider"],
    buckets=(0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
CALLS_HANDED_OFF = Counter(
    "telephony_edge_calls_handed_off_total",
    "Live calls this worker let go for another worker to carry on, by cause (drain, network:"
    " the network is bringing the call back to the edge, superseded: another worker took it)",
    ["cause"],
)
CALL_SETUP_SECONDS = Histogram(
    "telephony_edge_call_setup_seconds",
    "First caller frame to agent onready",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RELAY_LATENCY_SECONDS = Histogram(
    "telephony_edge_relay_latency_seconds",
    "Per-frame edge processing time from one side to the other, excluding real-time pacing",
    ["direction"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05),
)
FRAMES_PREBUFFERED = Counter(
    "telephony_edge_frames_prebuffered_total",
    "Caller frames held while the agent link was connecting, delivered on onready",
)
FRAMES_DROPPED = Counter(
    "telephony_edge_frames_dropped_total", "Audio frames dropped, by reason", ["reason"]
)
CALLER_FRAMES_FILLED = Counter(
    "telephony_edge_caller_frames_filled_total",
    "Frames the call's clock sent the agent core where the caller's audio did not come"
    " (a gap, silence suppression, DTX, an ended track), by kind",
    ["kind"],
)
BAD_INPUT = Counter(
    "telephony_edge_bad_input_total",
    "Malformed or rejected input from a network or peer, by source",
    ["source"],
)
DTMF_OUT = Counter(
    "telephony_edge_dtmf_out_total",
    "send_dtmf requests of the agent core, by provider and outcome (sent: the network took "
    "the keys; failed: it could not, or too many were waiting); malformed ones are bad input",
    ["provider", "outcome"],
)
AGENT_LINK_FAILURES = Counter(
    "telephony_edge_agent_link_failures_total", "Agent-core link failures, by stage", ["stage"]
)
WEBHOOK_RESULTS = Counter(
    "telephony_edge_webhook_results_total", "Webhook calls by kind and outcome", ["kind", "outcome"]
)
CONVERSATION_TRUNCATED = Counter(
    "telephony_edge_conversation_truncated_total",
    "Chat messages and function calls left out of end-of-call payloads past their bounds",
    ["kind"],
)
WEBHOOK_DEAD_LETTERS_TOTAL = Counter(
    "telephony_edge_webhook_dead_letters_total",
    "End-of-call webhooks this worker moved to the dead letters (failed max_attempts times, "
    "refused by the receiver or a refused target)",
)
WEBHOOK_DEAD_LETTERS = Gauge(
    "telephony_edge_webhook_dead_letter_size",
    "End-of-call webhooks in the dead letters (shared by all workers), as last read",
)
LOOP_RESTARTS = Counter(
    "telephony_edge_loop_restarts_total",
    "Background loops (control inbox, heartbeat, webhook dispatch, reaper) restarted after failing",
    ["loop"],
)
COORDINATOR_ERRORS = Counter(
    "telephony_edge_coordinator_errors_total",
    "Coordinator (Redis) operations that failed (unreachable, timed out), by operation",
    ["op"],
)
CALL_RECORDS_RESTORED = Counter(
    "telephony_edge_call_records_restored_total",
    "Live calls whose record the coordinator had lost (Redis restarted empty, evicted) "
    "and this worker wrote again",
)
COORDINATOR_UP = Gauge(
    "telephony_edge_coordinator_up", "1 while the coordinator answers, 0 while it does not"
)
CALLS_REFUSED = Counter(
    "telephony_edge_calls_refused_total",
    "New calls this worker refused or redirected, by reason",
    ["reason"],
)
AGENT_CORE_ENDPOINT_UP = Gauge(
    "telephony_edge_agent_core_endpoint_up",
    "1 while an agent-core endpoint is in service, 0 while benched by its circuit breaker",
    ["url"],
)
AGENT_CORE_ENDPOINT_FAILURES = Counter(
    "telephony_edge_agent_core_endpoint_failures_total",
    "Failed connects to an agent-core endpoint",
    ["url"],
)
DRAINING = Gauge("telephony_edge_draining", "1 while the worker drains before exit")

# Twilio (telephony_edge.twilio).
VONAGE_WEBHOOKS = Counter(
    "telephony_edge_vonage_webhooks_total",
    "Vonage answer/event webhooks by kind and outcome",
    ["kind", "outcome"],
)
TWILIO_WEBHOOKS = Counter(
    "telephony_edge_twilio_webhooks_total",
    "Twilio voice/status webhooks by kind and outcome",
    ["kind", "outcome"],
)
TWILIO_STREAMS = Counter(
    "telephony_edge_twilio_streams_total",
    "Media Streams WebSockets by outcome (accepted or why they were refused)",
    ["outcome"],
)
TWILIO_SEQUENCE_GAPS = Counter(
    "telephony_edge_twilio_sequence_gaps_total",
    "Media Streams messages missing, from gaps in Twilio's sequence numbers",
)
TWILIO_REST_REQUESTS = Counter(
    "telephony_edge_twilio_rest_requests_total",
    "Twilio REST API requests by operation and outcome",
    ["op", "outcome"],
)
TWILIO_LATE_SENDS = Counter(
    "telephony_edge_twilio_late_sends_total",
    "Agent frames sent to Twilio 10-180 ms behind their real-time slot (a gap the caller hears)",
)

# SIP media (telephony_edge.sip.leg): callers' RTP as RTCP counts it, all calls together.
SIP_RTP_PACKETS = Counter(
    "telephony_edge_sip_rtp_packets_total",
    "Callers' RTP packets: received, lost (RFC 3550 cumulative) and late (after their turn)",
    ["outcome"],
)
SIP_RTP_JITTER_SECONDS = Histogram(
    "telephony_edge_sip_rtp_jitter_seconds",
    "Interarrival jitter of callers' RTP (RFC 3550 A.8), one observation per call per report",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2),
)
SIP_JITTER_BUFFER_DELAY_SECONDS = Histogram(
    "telephony_edge_sip_jitter_buffer_delay_seconds",
    "Delay the jitter buffer holds callers' audio for (its adaptive target), one observation "
    "per call per report",
    buckets=(0.02, 0.03, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5),
)
SIP_PLAYOUT_FRAMES = Counter(
    "telephony_edge_sip_playout_frames_total",
    "20 ms frames of callers' audio the jitter buffer made up or moved: concealed (loss), "
    "silence (the caller sent nothing), dropped and inserted (delay adapted, drift absorbed)",
    ["kind"],
)
SIP_RTP_LOSS_RATIO = Histogram(
    "telephony_edge_sip_rtp_loss_ratio",
    "Fraction of a caller's RTP packets lost over the call",
    buckets=(0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
)
SIP_RTCP_PACKETS = Counter(
    "telephony_edge_sip_rtcp_packets_total",
    "RTCP compound packets: sent, received, malformed or from a stranger (dropped)",
    ["outcome"],
)
RTP_FOREIGN_PACKETS = Counter(
    "telephony_edge_rtp_foreign_packets_total",
    "RTP and RTCP packets dropped because they came from an address other than the call's "
    "peer (the SDP's, or the one learned); a steady rate is someone probing the RTP ports",
    ["protocol"],
)
SIP_SEND_FAILURES = Counter(
    "telephony_edge_sip_send_failures_total",
    "SIP, RTP or RTCP datagrams that could not be sent (a name, the wrong family, no route)",
    ["kind"],
)
SIP_RTCP_RTT_SECONDS = Histogram(
    "telephony_edge_sip_rtcp_rtt_seconds",
    "Round-trip time to SIP callers from their RTCP report blocks (LSR/DLSR)",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6),
)
PUBLIC_OFFERS_REFUSED = Counter(
    "telephony_edge_public_offers_refused_total",
    "Public-key WebRTC offers refused (429) by a rate limit: 'client' (one client's bucket),"
    " 'global' (all clients together, per worker) or 'resume' (one call's re-offers)",
    ["limit"],
)
# SIP floods (telephony_edge.sip.ratelimit, sip.tcp, sip.auth): what the edge refused.
SIP_RATE_LIMITED = Counter(
    "telephony_edge_sip_rate_limited_total",
    "SIP requests (and responses, method 'response') over their source's rate limit"
    " (UDP: dropped, TCP: 503), by method",
    ["method", "transport"],
)
SIP_TRANSACTIONS_OPEN = Gauge(
    "telephony_edge_sip_transactions_open",
    "SIP transactions open (answered ones stay up to 32 s for retransmissions); at"
    " sip.max_transactions, requests outside a dialog get 503",
)
SIP_TCP_CLOSED = Counter(
    "telephony_edge_sip_tcp_closed_total",
    "SIP-over-TCP connections refused or closed by the edge, by reason: per_source, full,"
    " evicted (a newcomer to a full table took its place), no_message, slow, idle",
    ["reason"],
)
SIP_CONNECT_FAILURES = Counter(
    "telephony_edge_sip_connect_failures_total",
    "The edge's own SIP connections (TCP, TLS) that could not be opened, by reason: refused"
    " (or unreachable), timeout, handshake (TLS), certificate (the server's not trusted, or"
    " not for the name dialled)",
    ["transport", "reason"],
)
SIP_SRTP_DROPPED = Counter(
    "telephony_edge_sip_srtp_dropped_total",
    "SRTP and SRTCP packets dropped by a call's SRTP context (sip/srtp.py), by reason: auth"
    " (a forged or damaged packet), replay, malformed, mki (not the key's), key_expired"
    " (the peer's key lifetime spent without a rekey); unsent: one of ours libsrtp would"
    " not protect (an index used twice)",
    ["protocol", "reason"],
)
SIP_DIGEST = Counter(
    "telephony_edge_sip_digest_total",
    "Digest authentication of trunks' INVITEs by outcome: ok, challenged, stale, replayed"
    " (a used nonce and nc), bad (wrong credentials), locked (refused unchecked: guessing)",
    ["outcome"],
)
# The edge's own SIP requests (telephony_edge.sip.dialer, telephony_edge.sip.accounts).
SIP_OUTBOUND_CALLS = Counter(
    "telephony_edge_sip_outbound_calls_total",
    "Outbound SIP calls by how their INVITE ended: answered, busy, no-answer, failed, canceled",
    ["outcome"],
)
SIP_REGISTRATION_UP = Gauge(
    "telephony_edge_sip_registration_up",
    "1 while this worker holds a registration of the account with its registrar, else 0 (the "
    "maximum over workers is whether calls to the account can reach the edge)",
    ["account"],
)
SIP_REGISTRATIONS = Counter(
    "telephony_edge_sip_registrations_total",
    "Registration changes by outcome: registered (granted or refreshed), failed (backing off),"
    " expired (the binding ran out), stopped",
    ["outcome"],
)

# Answering-machine detection (telephony_edge.calls.bridge): the result that decided each call.
AMD_RESULTS = Counter(
    "telephony_edge_amd_results_total",
    "Answering-machine detection results (human, machine, unknown) by source",
    ["source", "result"],
)
AMD_DECISION_SECONDS = Histogram(
    "telephony_edge_amd_decision_seconds",
    "Time from the callee's first audio to the detection result",
    ["source"],
    buckets=(0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 8.0, 12.0, 20.0),
)

# Call recording (telephony_edge.recording): each recording's end, the spool, the uploads.
RECORDINGS = Counter(
    "telephony_edge_recordings_total",
    "Recordings by outcome: stored, late (not ready for the webhook), failed",
    ["outcome"],
)
RECORDING_SPOOL_BYTES = Gauge(
    "telephony_edge_recording_spool_bytes",
    "Bytes this worker's recordings hold on local disk until stored (live calls', and with S3"
    " those waiting for their upload); bounded by recording.spool_max_bytes",
)
RECORDING_SPOOL_FULL = Counter(
    "telephony_edge_recording_spool_full_total",
    "Recordings the spool's bound (recording.spool_max_bytes) kept from starting (refused) or"
    " stopped mid-call (truncated), by action",
    ["action"],
)
RECORDING_UPLOADS_PENDING = Gauge(
    "telephony_edge_recording_uploads_pending",
    "Recordings this worker is uploading to S3 (each retried with back-off until stored)",
)
RECORDING_PARTS = Counter(
    "telephony_edge_recording_parts_total",
    "Earlier workers' parts of moved calls' recordings, by outcome: joined into the call's one"
    " recording, or missing (not on this worker's spool: another node's; uploaded on its own"
    " by that node, the gap silent in the recording)",
    ["outcome"],
)
RECORDING_UPLOAD_FAILURES = Counter(
    "telephony_edge_recording_upload_failures_total",
    "Failed attempts to upload a recording to S3, each tried again after a back-off, by reason:"
    " timeout, http_5xx, http_4xx, network, other",
    ["reason"],
)
