"""Errors a user fixes from one line of text, without a traceback."""

from __future__ import annotations

import errno
import os
import socket


class UserError(Exception):
    """A problem with what the user asked for (a busy port, a missing file...).

    The command line prints ``str()`` as one line on stderr and exits with
    ``exit_code``; library callers can catch it like any exception.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ListenError(UserError):
    """``serve`` could not listen (port in use, not allowed, unknown address)."""

    _HINTS = {
        errno.EADDRINUSE: "another process uses it; stop that one or choose another --port",
        errno.EACCES: "ports below 1024 need privileges; choose another --port",
        errno.EADDRNOTAVAIL: "this machine has no such address; check --host",
    }

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        hint = self._HINTS.get(exc.errno or 0)
        message = f"cannot listen on {host}:{port}: {os_reason(exc)}"
        super().__init__(f"{message} ({hint})" if hint else message)


def os_reason(exc: OSError) -> str:
    """An OSError's reason in a few words, e.g. ``connection refused``.

    asyncio's messages repeat the address and hide the errno's plain text.
    """
    if exc.errno and exc.errno > 0 and not isinstance(exc, socket.gaierror):
        return os.strerror(exc.errno).lower()
    return (exc.strerror or str(exc)).lower()
