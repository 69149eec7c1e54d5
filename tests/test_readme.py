"""The README's walk-throughs work pasted as written, one after another, in one shell.

A new user pastes the ```sh blocks into one interactive terminal, in order.
This test does the same: one ``bash --norc -i`` on a pseudo-terminal (job
control on, as in a real terminal) gets each block's text as it is written,
then a marker. A block passes when none of its commands exits non-zero (an
ERR trap reports them), the terminal shows no ``no such job`` or traceback,
it prints and writes what the README says it does, and once every block has
run no process the blocks started is left (ports 8080 and 5080 free).

Not pasted: ``bash scripts/test.sh`` (it runs this very test and the whole
suite). Every other block runs; ``bash scripts/run.sh`` serves in the
foreground, so the test waits for its ``/readyz`` and presses Ctrl-C, as the
user would. The README's deploy commands (docker, kubectl) are prose, not
blocks, and are checked by tests/test_deploy.py.
"""

from __future__ import annotations

import codecs
import contextlib
import fcntl
import os
import pty
import re
import select
import signal
import socket
import struct
import tempfile
import termios
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import require_binary
from tests.markdown import Block, fenced_blocks

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# The walk-throughs use the demo's fixed ports: one run at a time on a machine.
LOCK_FILE = Path(tempfile.gettempdir()) / "telephony-edge-readme-walkthroughs.lock"
PORTS = (("tcp", 8080), ("tcp", 5080), ("udp", 5080))
TOOLS = {
    "bash": "Debian: apt-get install -y bash",
    "curl": "Debian: apt-get install -y curl",
    "sipp": "Debian: apt-get install -y sip-tester",
    "python3": "Debian: apt-get install -y python3",
}
NOT_PASTED = ("bash scripts/test.sh",)  # runs this test: pasting it here would recurse
FOREGROUND_SERVER = "bash scripts/run.sh"  # serves until Ctrl-C
FORBIDDEN = ("no such job", "Traceback", "address already in use")
RUN_MARK = "README_WALKTHROUGH_RUN"  # in the environment of everything the shell starts
BLOCK_TIMEOUT_S = 180.0
SERVER_READY_TIMEOUT_S = 300.0  # run.sh installs first


@dataclass(frozen=True)
class Expect:
    """What the README says a block (the one containing ``key``) prints and writes."""

    key: str
    prints: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    # (command, exit status) the README itself says fails, e.g. sipp on the edge's BYE
    may_fail: tuple[tuple[str, int], ...] = ()


EXPECTED = (
    Expect("simulate twilio", writes=("reply.wav",)),
    Expect("simulate vonage", writes=("reply-vonage.wav",)),
    Expect('echo "$SIP_URI"', prints=("sipp exit 0", "sip:call_", "@127.0.0.1:5080")),
    Expect("uac_refer.xml", prints=("sipp exit 0", "agent-ended +15555550123")),
    Expect(
        '"voicemail"',
        prints=("sipp exit 1", "voicemail-hangup {'result': 'machine'", '"voicemail-hangup"'),
        may_fail=(("sipp", 1),),  # the README: sipp aborts on the edge's BYE, exit 1
    ),
    Expect("examples/meeting_bot.py", writes=("heard.wav",)),
)

SETUP = (
    "PS1= PS2=; set +o history\n"
    # A failing command, in a form that echoed input cannot fake ("__E""RR__").
    '__err() { local s=$?; echo "__E""RR__ $s ${BASH_COMMAND%%$\'\\n\'*}"; }; trap __err ERR\n'
)
ERR_LINE = re.compile(r"__ERR__ (\d+) (\S*)")
TERMINAL_NOISE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\r")


def walkthroughs() -> list[Block]:
    """The README's ```sh blocks, in order."""
    return [block for block in fenced_blocks(README.read_text("utf-8")) if block.lang == "sh"]


def pasted(block: Block) -> str:
    """What the test pastes of a block: all of it but the lines of :data:`NOT_PASTED`."""
    lines = block.text.splitlines(keepends=True)
    return "".join(line for line in lines if not line.strip().startswith(NOT_PASTED))


def expectation(block: Block) -> Expect:
    """The README's promises about this block (none beyond success if it names none)."""
    found = [expect for expect in EXPECTED if expect.key in block.text]
    assert len(found) <= 1, f"README.md:{block.line}: more than one expectation matches"
    return found[0] if found else Expect("")


class Terminal:
    """``bash --norc -i`` on a pseudo-terminal: what a user's terminal gives pasted text."""

    def __init__(self, env: dict[str, str]) -> None:
        pid, fd = pty.fork()
        if pid == 0:  # the child: the user's shell, in the repository's folder
            try:
                os.chdir(ROOT)
                os.execvpe("bash", ["bash", "--norc", "-i"], env)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
        self.output = ""
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode  # "…" split in two

    def paste(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def interrupt(self) -> None:
        """Ctrl-C: the terminal sends SIGINT to the foreground job."""
        os.write(self.fd, b"\x03")

    def read(self, within: float) -> None:
        """Append what the terminal shows within ``within`` seconds (less if it shows it now)."""
        ready, _, _ = select.select([self.fd], [], [], within)
        if ready:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # the shell is gone
                return
            self.output += TERMINAL_NOISE.sub("", self._decode(chunk))

    def wait_for(self, marker: str, within: float) -> bool:
        deadline = time.monotonic() + within
        while marker not in self.output and time.monotonic() < deadline:
            self.read(min(0.5, max(0.0, deadline - time.monotonic())))
        return marker in self.output

    def close(self) -> None:
        """Hang up, as closing the terminal window does (the shell HUPs its jobs)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGHUP)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and os.waitpid(self.pid, os.WNOHANG) == (0, 0):
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def started_by(token: str, but: int) -> dict[int, str]:
    """The live processes (pid → command line) whose environment carries this run's mark.

    Jobs get process groups of their own under job control, so the mark, not a
    process group, is what finds every process the pasted blocks started.
    """
    mark = f"{RUN_MARK}={token}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == but:
            continue
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if command:  # a zombie has none: it is gone, only not yet reaped
                    found[int(entry.name)] = command.strip()
        except OSError:  # gone meanwhile, or not ours
            continue
    return found


def stop(pids: dict[int, str]) -> None:
    """End the given processes (ours, found by their mark): TERM, then KILL after 5 s."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def busy_ports() -> list[str]:
    """The walk-throughs' fixed ports that something listens on now."""
    busy: list[str] = []
    for kind, port in PORTS:
        family = socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM
        with socket.socket(socket.AF_INET, family) as sock:
            if kind == "tcp":  # a connection in TIME_WAIT is not a listener
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy.append(f"{kind}/{port}")
    return busy


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


@contextlib.contextmanager
def ports_to_ourselves(within: float = 600.0) -> Iterator[None]:
    """Hold the machine's README lock, then wait for the fixed ports to be free.

    Parallel runs (another checkout, another session) would otherwise start
    their demo edges on the same ports and talk to each other's.
    """
    with LOCK_FILE.open("a") as lock:
        deadline = time.monotonic() + within
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                assert time.monotonic() < deadline, f"{LOCK_FILE} held for {within} s"
                time.sleep(1)
        try:
            deadline = time.monotonic() + 30
            while busy_ports() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert not busy_ports(), (
                f"ports {busy_ports()} are taken by a process this test did not start; "
                "the README's walk-throughs need them"
            )
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def block_problems(block: Block, expect: Expect, output: str, since: float) -> list[str]:
    """What went wrong in one block, judged from what its commands showed and wrote."""
    where = f"README.md:{block.line} ({block.heading})"
    problems: list[str] = []
    for status, command in ERR_LINE.findall(output):
        if (command, int(status)) not in expect.may_fail:
            problems.append(f"{where}: `{command}` exited {status}")
    problems += [f"{where}: printed {text!r}" for text in FORBIDDEN if text in output]
    problems += [f"{where}: did not print {text!r}" for text in expect.prints if text not in output]
    for name in expect.writes:
        path = ROOT / name
        if not path.exists() or path.stat().st_mtime < since:
            problems.append(f"{where}: did not write {name}")
    return problems


def run_block(terminal: Terminal, number: int, block: Block) -> tuple[str, bool]:
    """Paste one block and what follows it; its output, and whether it finished in time."""
    start = len(terminal.output)
    terminal.paste(pasted(block))
    if FOREGROUND_SERVER in block.text:
        last = pasted(block).strip().splitlines()[-1]
        assert last.startswith(FOREGROUND_SERVER), (
            f"README.md:{block.line}: a foreground server must be the block's last command"
        )
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while not ready("http://127.0.0.1:8080/readyz") and time.monotonic() < deadline:
            terminal.read(0.5)
            if "__ERR__" in terminal.output[start:]:
                break
        terminal.interrupt()  # the user stops it with Ctrl-C
    marker = f"__BLOCK_END__ {number}"
    terminal.paste(f'echo "__BLOCK""_END__ {number}"\n')
    finished = terminal.wait_for(marker, BLOCK_TIMEOUT_S)
    return terminal.output[start:], finished


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


@pytest.mark.timeout(1800)
def test_readme_walkthroughs_pasted_in_one_shell() -> None:
    for tool, install in TOOLS.items():
        require_binary(tool, install)
    blocks = walkthroughs()
    assert len(blocks) >= 7, "the README's walk-throughs were not found"
    used = {expectation(block).key for block in blocks}
    assert {expect.key for expect in EXPECTED} <= used, "an expectation names no README block"

    token = uuid.uuid4().hex
    env = {**os.environ, RUN_MARK: token, "TERM": "dumb", "HISTFILE": "/dev/null"}
    problems: list[str] = []
    with ports_to_ourselves():
        terminal = Terminal(env)
        try:
            terminal.paste(SETUP + 'echo "__SET""UP__"\n')
            assert terminal.wait_for("__SETUP__", 30), tail(terminal.output)
            for number, block in enumerate(blocks):
                if not pasted(block).strip():
                    continue
                since = time.time() - 1  # file times are coarser than the clock
                output, finished = run_block(terminal, number, block)
                problems += block_problems(block, expectation(block), output, since)
                if not finished:
                    problems.append(f"README.md:{block.line}: not done in {BLOCK_TIMEOUT_S} s")
                if problems:
                    problems.append(f"its output ends:\n{tail(output)}")
                    break  # what follows would run on a broken state
            time.sleep(0.5)  # a stopped edge's children are reaped
            left = started_by(token, but=terminal.pid)
            problems += [f"still running after the walk-throughs: {c}" for c in left.values()]
            busy = busy_ports()
            problems += [f"port {port} still in use after the walk-throughs" for port in busy]
        finally:
            stop(started_by(token, but=terminal.pid))
            terminal.close()
            stop(started_by(token, but=-1))
    assert not problems, "\n".join(problems)


def test_pasted_text_leaves_out_only_the_test_command() -> None:
    blocks = walkthroughs()
    texts = [pasted(block) for block in blocks]
    assert all("scripts/test.sh" not in text for text in texts)
    assert sum(text.strip() == "" for text in texts) == sum(
        block.text.strip() == "bash scripts/test.sh" for block in blocks
    )
