"""The strict RTP source rule on its own (``telephony_edge.sip.rtp_source``): packets and
times in, verdicts out, no sockets. Through real sockets: ``test_rtp_hijack.py``."""

from __future__ import annotations

import random

from telephony_edge.sip.rtp_source import (
    MAX_CANDIDATES,
    MAX_HELD_RTCP,
    TRANSITIONS,
    Kind,
    Phase,
    RtcpArrival,
    SourceLearner,
    Verdict,
    normalize,
)
from telephony_edge.sip.sdp import MediaConfig, negotiate, parse_sdp

SDP = ("192.0.2.10", 40000)  # what the caller's SDP names
NAT = ("198.51.100.20", 61002)  # where a NAT'd caller's packets come from
STRANGER = ("203.0.113.66", 5004)

A, H, F, L = Verdict.ACCEPT, Verdict.HELD, Verdict.FOREIGN, Verdict.LOCKED


def learner(learn_packets: int = 4, window_s: float = 10.0) -> SourceLearner[int]:
    return SourceLearner(SDP, 0.0, learn_packets=learn_packets, window_s=window_s)


def feed(
    rule: SourceLearner[int], packets: list[tuple[tuple[str, int], int, int]], now: float = 0.0
) -> list[Verdict]:
    """(source, ssrc, seq) in turn; each packet's item is its sequence number."""
    return [rule.check(src, ssrc, seq, now, seq) for src, ssrc, seq in packets]


def test_the_sdp_address_is_the_peer_at_its_first_packet_and_strangers_are_foreign() -> None:
    rule = learner()
    assert rule.destination == SDP and rule.peer is None
    assert feed(rule, [(SDP, 1, 100)]) == [L]
    assert rule.peer == SDP and rule.phase is Phase.LOCKED and rule.take_held() == []
    # mid-call, a stranger's in-sequence stream never wins
    assert feed(rule, [(STRANGER, 9, s) for s in range(20)]) == [F] * 20
    assert rule.stats.foreign == 20 and rule.peer == SDP and rule.destination == SDP


def test_one_packet_before_the_caller_takes_nothing() -> None:
    rule = learner()
    assert feed(rule, [(STRANGER, 9, 7)]) == [H]  # on probation, not the peer
    assert rule.peer is None and rule.destination == SDP  # the greeting still goes to the SDP's
    assert feed(rule, [(SDP, 1, 100)]) == [L]
    assert rule.take_held() == []  # the stranger's packet is never released
    assert rule.stats.foreign == 1 and rule.last_foreign == STRANGER  # foreign once let go
    assert feed(rule, [(STRANGER, 9, 8)]) == [F]
    assert rule.stats.foreign == 2


def test_a_natted_source_is_learned_from_n_in_sequence_packets_and_loses_none() -> None:
    rule = learner(learn_packets=4)
    assert feed(rule, [(NAT, 5, s) for s in (1000, 1001, 1002)]) == [H, H, H]
    assert rule.peer is None and rule.destination == SDP
    assert feed(rule, [(NAT, 5, 1003)]) == [L]
    assert rule.peer == NAT and rule.destination == NAT and rule.stats.learned == 1
    assert rule.take_held() == [1000, 1001, 1002]  # then 1003 itself: nothing lost
    assert rule.take_held() == []
    assert feed(rule, [(STRANGER, 5, 1004)]) == [F]


def test_a_gap_a_repeat_or_another_ssrc_starts_the_count_again() -> None:
    rule = learner(learn_packets=3)
    assert feed(rule, [(NAT, 5, 10), (NAT, 5, 11), (NAT, 5, 13)]) == [H, H, H]  # 12 missing
    assert feed(rule, [(NAT, 6, 14)]) == [H]  # another SSRC
    assert feed(rule, [(NAT, 6, 14)]) == [H]  # a repeat
    assert feed(rule, [(NAT, 6, 15), (NAT, 6, 16)]) == [H, L]
    assert rule.take_held() == [14, 15]
    assert rule.stats.foreign == 4  # 10, 11; 13; 14 (the repeat's first): runs that broke


def test_the_sequence_number_wraps() -> None:
    rule = learner(learn_packets=3)
    assert feed(rule, [(NAT, 5, 65534), (NAT, 5, 65535), (NAT, 5, 0)]) == [H, H, L]


def test_strangers_interleaved_do_not_reset_the_callers_count() -> None:
    rule = learner(learn_packets=4)
    verdicts = []
    for seq in range(4):
        verdicts += feed(rule, [(STRANGER, 9, 500 + 7 * seq), (NAT, 5, seq)])
    assert verdicts == [H, H, H, H, H, H, H, L] and rule.peer == NAT


def test_a_burst_learned_before_the_caller_is_replaced_by_the_sdp_address() -> None:
    """Learning's limit (as Asterisk's): a stranger first with N packets wins the window, but
    the SDP's address, named by the dialog, takes the call back at its first packet."""
    rule = learner(learn_packets=4)
    assert feed(rule, [(STRANGER, 9, s) for s in range(4)]) == [H, H, H, L]
    assert feed(rule, [(SDP, 1, 100)]) == [L]
    assert rule.peer == SDP and rule.take_held() == []
    assert feed(rule, [(STRANGER, 9, 4)]) == [F]
    assert (rule.stats.learned, rule.stats.signalled) == (1, 1)


def test_no_learning_after_the_window() -> None:
    rule = learner(learn_packets=2, window_s=5.0)
    assert [rule.check(NAT, 5, s, 5.0 + s, s) for s in range(3)] == [F, F, F]
    assert rule.phase is Phase.CLOSED and rule.peer is None and rule.destination == SDP
    assert rule.check(SDP, 1, 1, 9.0, 1) is L  # the SDP's address still is the caller's
    assert rule.check(NAT, 5, 3, 9.1, 3) is F


def test_held_packets_of_a_source_that_lost_are_dropped_not_released() -> None:
    rule = learner(learn_packets=3)
    feed(rule, [(STRANGER, 9, 1), (STRANGER, 9, 2)])
    assert feed(rule, [(NAT, 5, 50), (NAT, 5, 51), (NAT, 5, 52)]) == [H, H, L]
    assert rule.take_held() == [50, 51]


def test_probation_is_bounded_evicting_the_source_heard_from_longest_ago() -> None:
    rule = learner(learn_packets=2)
    rule.check(NAT, 5, 1, 0.0, 1)
    for n in range(MAX_CANDIDATES):  # strangers from many ports, NAT's one packet oldest
        rule.check(("203.0.113.66", 6000 + n), 9, 1, 0.1, 1)
    assert rule.check(NAT, 5, 2, 0.2, 2) is H  # it was evicted: its run starts again
    assert rule.check(NAT, 5, 3, 0.2, 3) is L


def test_a_media_change_learns_again_from_a_new_window() -> None:
    rule = learner(learn_packets=3, window_s=5.0)
    feed(rule, [(SDP, 1, 1)])
    moved = ("192.0.2.99", 41000)
    assert not rule.moves(SDP, None) and rule.moves(moved, None)
    rule.relearn(moved, None, 60.0)
    assert rule.peer is None and rule.destination == moved and rule.phase is Phase.LEARNING
    # the old address must earn it again like anyone; the new one is taken at once
    assert rule.check(SDP, 1, 2, 60.1, 2) is H
    assert rule.check(moved, 2, 7, 60.1, 7) is L and rule.peer == moved
    assert rule.check(SDP, 1, 3, 60.2, 3) is F


def test_seeded_strangers_around_a_call_never_cost_the_caller_a_packet() -> None:
    rng = random.Random(18)
    for _ in range(50):
        rule = learner(learn_packets=rng.randint(2, 6))
        caller_seq = rng.randrange(65536)
        stranger_seq = {n: rng.randrange(65536) for n in range(3)}
        caller_verdicts: list[Verdict] = []
        for _ in range(300):
            if rng.random() < 0.4:  # a stranger, sending in sequence to try its luck
                n = rng.randrange(3)
                stranger_seq[n] = (stranger_seq[n] + 1) & 0xFFFF
                verdict = rule.check(("203.0.113.66", 5000 + n), 9, stranger_seq[n], 0.0, 0)
                if caller_verdicts:
                    assert verdict is F
            else:
                caller_seq = (caller_seq + 1) & 0xFFFF
                verdict = rule.check(SDP, 1, caller_seq, 0.0, 1)
                caller_verdicts.append(verdict)
        assert caller_verdicts[0] is L and set(caller_verdicts[1:]) <= {A}
        assert rule.peer == SDP


def rtcp(
    rule: SourceLearner[int],
    source: tuple[str, int],
    ssrc: int,
    rtp_ssrc: int | None,
    now: float = 0.0,
) -> Verdict:
    """One compound RTCP packet from ``source`` whose first SSRC is ``ssrc``."""
    return rule.rtcp_check(
        RtcpArrival(source, ssrc, b"report %d" % ssrc, 1000.0 + now), rtp_ssrc, now
    )


def test_rtcp_follows_the_rtp_source() -> None:
    rule = SourceLearner[int](SDP, 0.0, rtcp=("192.0.2.10", 40011))  # a=rtcp:40011
    assert rule.rtcp_destination == ("192.0.2.10", 40011)
    assert rtcp(rule, ("192.0.2.10", 40011), 1, None) is A  # the offer's a=rtcp
    feed(rule, [(SDP, 1, 100)])  # the caller's RTP from its SDP address: the peer
    assert rtcp(rule, STRANGER, 1, 1) is F
    assert rtcp(rule, ("192.0.2.10", 40001), 1, 1) is A  # its RTP port + 1 too
    assert rtcp(rule, ("192.0.2.10", 40002), 2, 1) is F
    # a NAT'd caller: learned RTP; its RTCP from port + 1, or any port of its host with its SSRC
    rule = learner(learn_packets=2)
    assert rule.rtcp_destination == ("192.0.2.10", 40001)  # port + 1 without a=rtcp
    feed(rule, [(NAT, 5, 1), (NAT, 5, 2)])
    assert rule.rtcp_destination == (NAT[0], NAT[1] + 1)
    assert rtcp(rule, (NAT[0], NAT[1] + 1), 5, 5) is A
    assert rtcp(rule, (NAT[0], 7000), 77, 5) is F  # another SSRC from another port
    assert rtcp(rule, (STRANGER[0], 7000), 5, 5) is F  # the SSRC, from another host
    assert rtcp(rule, (NAT[0], 7000), 5, 5) is A
    assert rule.rtcp_destination == (NAT[0], 7000)  # symmetric once it came
    assert rule.stats.rtcp_foreign == 2 and rule.last_rtcp_foreign == (STRANGER[0], 7000)
    rule.relearn(SDP, None, 1.0)
    assert rule.rtcp_destination == ("192.0.2.10", 40001)


def test_rtcp_before_a_natd_peers_rtp_is_held_and_judged_when_the_peer_is_learned() -> None:
    rule = learner(learn_packets=2)
    # baresip behind NAT reports as the call starts, before its RTP is learned
    assert rtcp(rule, (NAT[0], NAT[1] + 1), 5, None) is H
    assert rtcp(rule, STRANGER, 5, None, now=0.1) is H  # not judged yet either
    assert rule.stats.rtcp_foreign == 0
    feed(rule, [(NAT, 5, 1), (NAT, 5, 2)], now=0.2)
    taken = rule.take_held_rtcp(5)
    assert [(a.source, a.wall) for a in taken] == [((NAT[0], NAT[1] + 1), 1000.0)]  # as it came
    assert rule.rtcp_source == (NAT[0], NAT[1] + 1)
    assert rule.stats.rtcp_foreign == 1 and rule.last_rtcp_foreign == STRANGER
    assert rule.take_held_rtcp(5) == []  # once


def test_held_rtcp_is_bounded_and_foreign_when_no_peer_comes() -> None:
    rule = learner(window_s=10.0)
    for n in range(MAX_HELD_RTCP + 2):
        assert rtcp(rule, STRANGER, n, None, now=float(n)) is H
    assert rule.stats.rtcp_foreign == 2  # the oldest let go past the bound
    assert rtcp(rule, STRANGER, 99, None, now=10.0) is F  # the window closed: no holding
    assert rule.stats.rtcp_foreign == MAX_HELD_RTCP + 3  # what was held went with it
    rule = learner()
    assert rtcp(rule, STRANGER, 1, None) is H
    rule.relearn(NAT, None, 1.0)  # the media moved: what was held is not the new peer's
    assert rule.stats.rtcp_foreign == 1 and rule.take_held_rtcp(None) == []


def test_addresses_as_sockets_report_them() -> None:
    assert normalize(("0.0.0.0", 4000)) is None  # RFC 2543 hold
    assert normalize(("192.0.2.1", 0)) is None
    assert normalize(("::ffff:192.0.2.1", 4000)) == ("192.0.2.1", 4000)
    assert normalize(("2001:DB8::1", 4000)) == ("2001:db8::1", 4000)
    rule = SourceLearner[int](("0.0.0.0", 4000), 0.0)
    assert rule.destination is None and rule.rtcp_destination is None


def test_every_phase_and_source_kind_has_a_rule() -> None:
    kinds = {Kind.SIGNALLED, Kind.OTHER}
    expected = {(p, k) for p in Phase for k in kinds} | {(Phase.LOCKED, Kind.PEER)}
    assert set(TRANSITIONS) == expected  # a peer exists only when LOCKED
    for step in TRANSITIONS.values():
        if step is not None and step[1] is L:
            assert step[0] is Phase.LOCKED
    assert TRANSITIONS[Phase.LOCKED, Kind.OTHER] == (Phase.LOCKED, F)  # never a stranger


def test_the_offers_a_rtcp_is_read() -> None:
    def offer(rtcp: str) -> bytes:
        return (
            "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n"
            f"m=audio 40000 RTP/AVP 0\r\n{rtcp}"
        ).encode()

    config = MediaConfig()
    assert negotiate(parse_sdp(offer("a=rtcp:40011\r\n")), config).rtcp == ("192.0.2.10", 40011)
    full = "a=rtcp:53020 IN IP4 126.16.64.4\r\n"  # RFC 3605's example
    assert negotiate(parse_sdp(offer(full)), config).rtcp == ("126.16.64.4", 53020)
    assert negotiate(parse_sdp(offer("")), config).rtcp is None
    for bad in ("x", "²", "99999", "0"):
        assert negotiate(parse_sdp(offer(f"a=rtcp:{bad}\r\n")), config).rtcp is None
