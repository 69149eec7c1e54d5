"""``telephony-edge simulate vonage``: one call from a WAV file to a running edge as Vonage
places it (:mod:`.simulator`); imported by every command, so the simulator (and its JWT
and signature libraries) is imported only when the command runs."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import wave
from typing import TYPE_CHECKING, Any

import aiohttp

from telephony_edge.errors import UserError
from telephony_edge.simulate import (
    EXIT_USAGE,
    CallFailed,
    add_call_arguments,
    check_out,
    check_url,
    wait_until_ready,
)

if TYPE_CHECKING:
    from telephony_edge.vonage.simulator import VonageResult


def add_vonage_simulate_cli(subparsers: Any) -> None:
    """Add ``simulate vonage`` beside ``simulate twilio`` (which creates ``simulate``)."""
    simulate = subparsers.choices["simulate"]
    networks = next(a for a in simulate._actions if isinstance(a, argparse._SubParsersAction))
    p = networks.add_parser("vonage", help="place a call as Vonage would (NCCO + audio WebSocket)")
    add_call_arguments(p, "16 kHz")
    p.add_argument(
        "--signature-secret",
        default=os.environ.get("TELEPHONY_EDGE_VONAGE__SIGNATURE_SECRET", ""),
        help="the edge's vonage.signature_secret "
        "(default: $TELEPHONY_EDGE_VONAGE__SIGNATURE_SECRET)",
    )
    p.set_defaults(func=_cmd_simulate_vonage)


def check_inputs(url: str, wav: str, out: str, secret: str) -> bytes:
    """Check the command's inputs before the call; return the caller audio (16 kHz PCM16)."""
    from telephony_edge.vonage.simulator import load_wav_l16

    check_url(url)
    if not secret:
        raise UserError(
            "--signature-secret: required (the edge's vonage.signature_secret)", EXIT_USAGE
        )
    try:
        audio = load_wav_l16(wav)
    except FileNotFoundError:
        raise UserError(f"--wav {wav}: no such file", EXIT_USAGE) from None
    except (OSError, wave.Error, EOFError, ValueError) as exc:
        raise UserError(f"--wav {wav}: cannot read it ({exc})", EXIT_USAGE) from None
    check_out(out)
    return audio


def _cmd_simulate_vonage(args: argparse.Namespace) -> int:
    from telephony_edge.vonage.simulator import RATE, write_wav_l16

    audio = check_inputs(args.url, args.wav, args.out, args.signature_secret)
    t0 = time.monotonic()
    result = asyncio.run(_simulate_when_ready(args, audio))
    write_wav_l16(args.out, result.heard_pcm)
    print(result.summary())
    heard_s = len(result.heard_pcm) / (2 * RATE)
    print(f"  wrote {args.out} ({heard_s:.1f} s heard) in {time.monotonic() - t0:.1f} s")
    failure = result.failure()
    if failure is not None:
        raise CallFailed(failure)
    return 0


async def _simulate_when_ready(args: argparse.Namespace, audio: bytes) -> VonageResult:
    from telephony_edge.vonage.simulator import simulate_call

    async with aiohttp.ClientSession() as session:
        if args.wait_ready > 0:
            await wait_until_ready(session, args.url, within_s=args.wait_ready)
        return await simulate_call(
            args.url,
            to=args.to,
            from_=args.from_,
            audio=audio,
            signature_secret=args.signature_secret,
            session=session,
            speak_after=args.speak_after,
            dtmf=args.dtmf,
            max_tail_s=args.tail,
        )
