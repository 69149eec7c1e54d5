"""The ``telephony-edge`` command: serve, check-config, agent-core, simulate."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from telephony_edge import __version__
from telephony_edge.config import Settings
from telephony_edge.config_loading import ConfigError, load_settings
from telephony_edge.errors import ListenError, UserError

EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _load(path: str | None) -> Settings | None:
    """The settings, or None after printing every problem (source: field: reason) on stderr."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        count = len(exc.problems)
        print(
            f"invalid configuration, {count} problem{'s' if count != 1 else ''}:", file=sys.stderr
        )
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
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

    settings = _load(args.config)
    if settings is None:
        return EXIT_CONFIG
    # the command line wins over the file and the environment (checked by argparse)
    given = {name: getattr(args, name) for name in ("host", "port")}
    server = {name: value for name, value in given.items() if value is not None}
    if server:
        settings = settings.model_copy(update={"server": settings.server.model_copy(update=server)})
    setup_logging(args.log_level)
    return _run(serve(settings), settings.server.use_uvloop)


def cmd_check_config(args: argparse.Namespace) -> int:
    from telephony_edge.banner import config_warnings

    settings = _load(args.file)
    if settings is None:
        return EXIT_CONFIG
    for warning in config_warnings(settings):  # valid, but probably not what was meant
        print(f"{args.file}: warning: {warning}", file=sys.stderr)
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
    except OSError as exc:  # the only one that gets here: the bind
        raise ListenError(args.host, args.port, exc) from None


def port_number(text: str) -> int:
    """argparse type: a TCP port, so a typo is a usage error rather than a bind failure."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return port


def _add_log_level(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=LOG_LEVELS,
        help="JSON logs on stderr from this level up (default: INFO)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="telephony-edge", description=__doc__)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve_p = sub.add_parser("serve", help="run the edge service")
    serve_p.add_argument(
        "--host", help="address to listen on; overrides the config (default: 127.0.0.1)"
    )
    serve_p.add_argument(
        "--port", type=port_number, help="port to listen on; overrides the config (default: 8080)"
    )
    serve_p.add_argument("--config", help="YAML configuration file (default: embedded defaults)")
    _add_log_level(serve_p)
    serve_p.set_defaults(func=cmd_serve)

    check_p = sub.add_parser(
        "check-config", help="validate a configuration file (and the environment) and exit"
    )
    check_p.add_argument("file", help="the YAML configuration file to check")
    check_p.set_defaults(func=cmd_check_config)

    core_p = sub.add_parser("agent-core", help="run the built-in demo agent core on its own")
    core_p.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    core_p.add_argument("--port", type=port_number, default=8765, help="port (default: 8765)")
    core_p.add_argument("--path", default="/agent", help="WebSocket path (default: /agent)")
    _add_log_level(core_p)
    core_p.set_defaults(func=cmd_agent_core)

    from telephony_edge.twilio.simulate_cli import add_simulate_cli

    add_simulate_cli(sub)
    from telephony_edge.vonage.simulate_cli import add_vonage_simulate_cli

    add_vonage_simulate_cli(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a :class:`UserError` is one line on stderr, never a traceback."""
    args = build_parser().parse_args(argv)
    command = " ".join(filter(None, (args.command, getattr(args, "network", None))))
    try:
        return int(args.func(args))
    except UserError as exc:
        print(f"telephony-edge {command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
