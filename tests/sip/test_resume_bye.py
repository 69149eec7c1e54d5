"""A caller who hangs up while its worker is dead and no other has taken the call yet
(issue 24, SIP): the call ends as the caller's hang-up, not as an error.

baresip calls through Kamailio (the shipped ``sip/examples/kamailio-resume.cfg``) to worker
A (tests/sip/resume_cluster.py); A is SIGKILLed mid-speech and baresip hangs up 0.15 s
later, before worker B has seen A die (about 0.75 s). Kamailio notes the BYE in Redis and
relays it by the route to A, which answers nothing; once B has taken the call over (the
route names B), Kamailio relays the BYE again, to B. What the caller and the webhook see:

* the BYE answered 200 OK, by B through Kamailio;
* no re-INVITE to the caller after its BYE (the call is not resumed);
* one webhook: ``user-ended``, the conversation so far, no migration.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.conftest import Receiver, wait_for
from tests.sip import baresip
from tests.sip.capture import Capture, Datagram
from tests.sip.conftest import register
from tests.sip.resume_cluster import cluster, dialog_kept, loud, ms

HANG_UP_AFTER_S = 0.15  # after A's death: B takes calls over 0.5-1 s after it


def sip_messages(capture: Capture, kamailio_port: int) -> list[Datagram]:
    return [d for d in capture.datagrams() if kamailio_port in (d.source[1], d.dest[1])]


def first_line(d: Datagram) -> str:
    return d.payload.split(b"\r\n", 1)[0].decode(errors="replace")


def cseq(d: Datagram) -> str:
    for line in d.payload.decode(errors="replace").split("\r\n"):
        if line.lower().startswith("cseq:"):
            return line.split(":", 1)[1].strip()
    return ""


async def test_a_caller_hanging_up_before_the_takeover_ends_the_call_as_its_hang_up(
    receiver: Receiver, tmp_path: Path
) -> None:
    async with cluster(receiver, tmp_path) as c:
        call_id = (await register(c.a))["call_id"]
        phone = tmp_path / "baresip"
        phone.mkdir()
        uri = f"sip:{call_id}@127.0.0.1:{c.kamailio_port}"
        wire = Capture(tmp_path / "wire.pcap", c.a_rtp[0], c.b_rtp[-1], also=c.kamailio_port)
        async with wire as capture:
            dialling = await baresip.start(uri, phone, "udp", 30, avoid=c.rtp)
            await dialog_kept(c.coordinator, call_id)
            for _ in range(500):  # the agent speaking from A
                sent = c.sent(capture.datagrams(), c.a_rtp)
                if len(sent) > 5 and all(loud(d) for d in sent[-5:]):
                    break
                await asyncio.sleep(0.02)
            c.a.process.kill()
            c.a.process.wait(5)
            await asyncio.sleep(HANG_UP_AFTER_S)
            dialling.hang_up()
            await dialling.finished()
            await wait_for(lambda: receiver.received, within=15)
            await asyncio.sleep(1.5)  # a second webhook, a late re-INVITE would have come
        [payload] = receiver.received
        assert (payload["call_id"], payload["call_status"]) == (call_id, "user-ended"), payload
        assert not payload.get("migrations"), payload  # not resumed
        chat = json.loads(payload["chat"])
        assert chat[0] == {**chat[0], "role": "assistant", "content": "Hi"}  # said on A
        sip = sip_messages(capture, c.kamailio_port)
        bye = next(  # the caller's (a worker's would come from its SIP port)
            d for d in sip if first_line(d).startswith("BYE ") and d.dest[1] == c.kamailio_port
        )
        caller = bye.source
        answers = [d for d in sip if d.dest == caller and cseq(d) == cseq(bye) and d.at > bye.at]
        assert answers and first_line(answers[0]) == "SIP/2.0 200 OK", [
            first_line(d) for d in answers
        ]
        to_b = [d for d in sip if d.dest[1] == c.b_port and first_line(d).startswith("BYE ")]
        assert to_b and to_b[0].at > bye.at  # Kamailio relayed it again, to B
        reinvites = [d for d in sip if d.dest == caller and first_line(d).startswith("INVITE ")]
        assert all(d.at < bye.at for d in reinvites), "the call was resumed after the BYE"

        assert "Traceback" not in c.b.log, c.b.log[-3000:]
        print(
            f"\nthe caller's BYE reached B {ms(to_b[0].at - bye.at)} after the proxy; answered "
            f"{first_line(answers[0])!r} {ms(answers[0].at - bye.at)} after it; re-INVITEs "
            f"before it: {len(reinvites)}"
        )
