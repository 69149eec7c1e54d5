"""The agent's keys reach real SIP peers.

baresip calls the edge (its offer has telephone-event) and decodes the RFC
4733 events the edge sends, key by key: its log names each key it received,
the start and the end of each. sipp calls without telephone-event, and its
scenario (``sip/uac_info_dtmf.xml``) checks the INFO requests the edge sends
instead. The agent core is the test's own: once the call is up it sends
``send_dtmf``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Receiver, wait_for
from tests.dtmf_core import DtmfCore
from tests.sip.baresip import baresip_binary, dial
from tests.sip.conftest import finished, register, sip_test_settings, sipp, sipp_binary

EVENT = re.compile(r"received event: '(.)' \(end=([01])\)")


async def test_baresip_receives_the_agents_keys_as_rfc4733_events(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    baresip_binary()
    script = [{"digits": "1#", "duration_ms": 200}, {"digits": "9"}]
    core = await DtmfCore(script, delay_s=1.0).start()
    edge = await make_edge(sip_test_settings(receiver, agent_core={"url": core.url}))
    registered = await register(edge)

    call = await dial(registered["sip_uri"], tmp_path, "udp", seconds=5)
    assert "Call established" in call.log, call.log[-3000:]
    events = [(key, end == "1") for key, end in EVENT.findall(call.log)]
    assert events == [
        ("1", False), ("1", True), ("#", False), ("#", True), ("9", False), ("9", True)
    ], call.log[-3000:]  # fmt: skip
    assert core.errors == {}
    await core.server.close()


async def test_without_telephone_event_sipp_gets_the_keys_by_info(
    make_edge: Callable[..., Any], receiver: Receiver, tmp_path: Path
) -> None:
    sipp_binary()
    core = await DtmfCore([{"digits": "4#", "duration_ms": 120}], delay_s=0.5).start()
    edge = await make_edge(sip_test_settings(receiver, agent_core={"url": core.url}))
    registered = await register(edge)

    process = await sipp(edge, "uac_info_dtmf.xml", registered["call_id"], tmp_path)
    await finished(process, tmp_path)  # both INFOs came, with the bodies it checks
    await wait_for(lambda: receiver.received, within=10)
    assert receiver.received[0]["call_status"] == "user-ended"
    assert core.errors == {}
    await core.server.close()
