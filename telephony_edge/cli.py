"""The ``telephony-edge`` command: serve, check-config, agent-core, simulate."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from telephony_edge.config import ConfigError, Settings, load_settings

EXIT_CONFIG = 2


def _load(path: str | None, **overrides: Any) -> Settings | None:
    try:
        return load_settings(path, **overrides)
    except ConfigError as exc:
        print(f"invalid configuration{f' in {path}' if path else ''}:", file=sys.stderr)
        for line in str(exc).splitlines():
            print(f"  {line}", file=sys.stderr)
        return None


def _run(coro: Any, use_uvloop: bool) -> int:
    if use_uvloop:
        try:
            import uvloop

            return int(uvloop.run(coro))
        except ImportError:
            pass
    return int(asyncio.run(coro))


def cmd_serve(args: argparse.Namespace) -> int:
    from telephony_edge.app import serve
    from telephony_edge.logs import setup_logging

    server: dict[str, Any] = {}
    if args.host is not None:
        server["host"] = args.host
    if args.port is not None:
        server["port"] = args.port
    settings = _load(args.config)
    if settings is None:
        return EXIT_CONFIG
    if server:
        merged = settings.server.model_copy(update=server)
        settings = _load(args.config, server=merged.model_dump())
        if settings is None:
            return EXIT_CONFIG
    setup_logging(args.log_level)
    return _run(serve(settings), settings.server.use_uvloop)


def cmd_check_config(args: argparse.Namespace) -> int:
    settings = _load(args.file)
    if settings is None:
        return EXIT_CONFIG
    print(
        f"{args.file}: ok ({len(settings.agents)} agents, {len(settings.regions)} regions, "
        f"{len(settings.numbers)} numbers)"
    )
    return 0


def cmd_agent_core(args: argparse.Namespace) -> int:
    from telephony_edge.agent.demo import run_agent_core
    from telephony_edge.logs import setup_logging

    setup_logging(args.log_level)
    print(f"demo agent core on ws://{args.host}:{args.port}{args.path}", flush=True)
    try:
        return _run(run_agent_core(args.host, args.port, path=args.path), use_uvloop=True)
    except KeyboardInterrupt:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telephony-edge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve_p = sub.add_parser("serve", help="run the edge service")
    serve_p.add_argument("--host", help="address to listen on (default from config: 127.0.0.1)")
    serve_p.add_argument("--port", type=int, help="port to listen on (default from config: 8080)")
    serve_p.add_argument("--config", help="YAML configuration file (default: embedded defaults)")
    serve_p.add_argument("--log-level", default="INFO")
    serve_p.set_defaults(func=cmd_serve)

    check_p = sub.add_parser("check-config", help="validate a configuration file and exit")
    check_p.add_argument("file")
    check_p.set_defaults(func=cmd_check_config)

    core_p = sub.add_parser("agent-core", help="run the built-in demo agent core on its own")
    core_p.add_argument("--host", default="127.0.0.1")
    core_p.add_argument("--port", type=int, default=8765)
    core_p.add_argument("--path", default="/agent")
    core_p.add_argument("--log-level", default="INFO")
    core_p.set_defaults(func=cmd_agent_core)

    from telephony_edge.twilio.simulator import add_simulate_cli

    add_simulate_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
