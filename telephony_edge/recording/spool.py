"""The local disk recordings use until they are in their store: claimed, counted, bounded.

Theory of operation
-------------------
A recording is a file in one directory, the spool (``recording.directory``),
from its call's first frame until it is stored: with S3 storage until its
upload succeeded, with local storage until its call ended (the directory
is then the store, and retention bounds it). The process that writes or
uploads a file claims it: an exclusive ``flock`` on a descriptor held from
the claim to its release. Such locks die with their process, so a file that
no process holds is a killed worker's (finished and waiting for its upload,
or cut off mid-call: playable to its last flush). :meth:`Spool.adopt` claims
those, for the upload queue (``uploads.py``): the queue of uploads is the
directory itself, so it survives a worker restart, and two workers that
share the directory never take the same file. A file written in the last
``quiet_s`` is left for a later pass: a dead worker's ffmpeg may still be
finishing it.

Bounded: the bytes of the files a worker holds (live, waiting for their
upload, adopted) are counted, and ``max_bytes`` bounds them. A recording
starts only if ``headroom`` more fits; a live recording's flush that finds
the spool past ``max_bytes`` stops it, the file kept as it is. So the spool
passes ``max_bytes`` by at most what each live recording writes between two
flushes: a second of WAV (64 KB of stereo), or one of ffmpeg's writes (it
writes its file 256 KiB at a time).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from telephony_edge import metrics

log = logging.getLogger(__name__)

#: the files a recording can be (a directory's other files are never touched)
FORMATS = ("wav", "mp3", "ogg")


@dataclass(eq=False, slots=True)
class Claim:
    """A spool file this process holds: its lock's descriptor and its bytes as last counted."""

    path: Path
    fd: int
    size: int = 0


def is_recording(path: Path) -> bool:
    return path.suffix.lstrip(".") in FORMATS


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


class Spool:
    """One worker's recording files in ``directory``, at most ``max_bytes`` of them."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._held: dict[str, Claim] = {}
        self._used = 0

    @property
    def used_bytes(self) -> int:
        """What the files this worker holds weigh, as last counted."""
        return self._used

    def create(self, name: str, headroom: int) -> Claim | None:
        """A new file ``name``, claimed; None if ``headroom`` more bytes would not fit.

        Raises OSError if it cannot be made (a file of that name already there included).
        """
        if self._used + headroom > self.max_bytes:
            return None
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        if not _lock(fd):  # cannot be: the file is new (O_EXCL)
            os.close(fd)
            raise OSError(f"{name}: held by another process")
        return self._hold(Claim(path, fd))

    def grow(self, claim: Claim, size: int) -> bool:
        """Count ``claim``'s file as ``size`` bytes now; False if the spool is past its bound."""
        self._count(size - claim.size)
        claim.size = size
        return self._used <= self.max_bytes

    def release(self, claim: Claim, *, delete: bool) -> None:
        """Let the file go: deleted (it is stored elsewhere) or left (the directory keeps it)."""
        if self._held.pop(claim.path.name, None) is None:
            return
        try:
            if delete:
                with contextlib.suppress(FileNotFoundError):
                    claim.path.unlink()
        finally:
            os.close(claim.fd)
            self._count(-claim.size)

    def claim(self, name: str) -> Claim | None:
        """Claim the file ``name`` no process holds (a moved call's earlier part); None while
        one does (its worker still finishing it). Raises FileNotFoundError if it is not here
        (on another node's spool, or already uploaded)."""
        if name in self._held:  # this worker's own, being let go
            return None
        fd = os.open(self.directory / name, os.O_RDONLY | os.O_CLOEXEC)
        if not _lock(fd):
            os.close(fd)
            return None
        stat = os.fstat(fd)
        if stat.st_nlink == 0:  # deleted as it was opened
            os.close(fd)
            raise FileNotFoundError(name)
        return self._hold(Claim(self.directory / name, fd, stat.st_size))

    def adopt(self, quiet_s: float) -> tuple[list[Claim], int]:
        """Claim the files no process holds, written ``quiet_s`` ago or more.

        Returns them and how many others were left for being too recent.
        """
        adopted: list[Claim] = []
        recent = 0
        try:
            paths = sorted(self.directory.iterdir())
        except FileNotFoundError:
            return adopted, recent
        now = time.time()
        for path in paths:
            if not is_recording(path) or path.name in self._held:
                continue
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # uploaded or swept meanwhile
                continue
            if not _lock(fd):  # another process writes or uploads it
                os.close(fd)
                continue
            stat = os.fstat(fd)
            if stat.st_nlink == 0 or stat.st_mtime > now - quiet_s:
                recent += stat.st_nlink > 0
                os.close(fd)  # unlocks
                continue
            adopted.append(self._hold(Claim(path, fd, stat.st_size)))
        return adopted, recent

    def _hold(self, claim: Claim) -> Claim:
        self._held[claim.path.name] = claim
        self._count(claim.size)
        return claim

    def _count(self, delta: int) -> None:
        self._used += delta
        metrics.RECORDING_SPOOL_BYTES.set(self._used)
