"""Small helpers shared by the lab modules: paths, progress lines, running commands.

Everything here runs commands as argv lists (never through a shell string built by
concatenation); the few shell snippets the lab needs are fixed scripts with their variable
parts passed as positional arguments.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..errors import OrchError

VLLM_VERSION = "0.32.0"
IMAGE_TAG = f"localhost/orch-lab/vllm-cpu:{VLLM_VERSION}"


class LabError(OrchError):
    """Any failure of the lab: a missing dependency, a command that failed, a bad state."""


def lab_dir() -> Path:
    """Root of the lab's state: `ORCH_LAB_DIR` or /var/lib/orch-lab."""
    return Path(os.environ.get("ORCH_LAB_DIR", "/var/lib/orch-lab"))


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (network namespaces, a bridge, iptables, sshd, containers); "
            "run it as root, e.g. `sudo orch lab up`"
        )


class Progress:
    """Plain progress lines with the seconds elapsed since the phase began."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()
        self.timings: dict[str, float] = {}

    def say(self, msg: str) -> None:
        if not self.quiet:
            print(f"[lab {time.monotonic() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    def phase(self, name: str) -> _Phase:
        return _Phase(self, name)


class _Phase:
    def __init__(self, progress: Progress, name: str) -> None:
        self.p, self.name = progress, name

    def __enter__(self) -> _Phase:
        self.start = time.monotonic()
        self.p.say(f"{self.name} ...")
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        took = time.monotonic() - self.start
        self.p.timings[self.name] = round(took, 1)
        self.p.say(f"{self.name} {'failed' if exc_type else 'done'} in {took:.1f}s")


def run(argv: Sequence[str], *, check: bool = True, input: str | bytes | None = None,
        env: dict[str, str] | None = None, timeout: float | None = 120) -> subprocess.CompletedProcess[str]:
    """Run a short command, capture its output; on failure raise LabError with the tail."""
    text_input = input.decode() if isinstance(input, bytes) else input
    cp = subprocess.run(list(argv), capture_output=True, text=True, input=text_input, env=env,
                        timeout=timeout, check=False)
    if check and cp.returncode != 0:
        tail = (cp.stderr or cp.stdout).strip()[-1500:]
        raise LabError(f"command failed (exit {cp.returncode}): {' '.join(argv)}\n{tail}")
    return cp


def run_logged(argv: Sequence[str], log: Path, progress: Progress, label: str, *,
               every: float = 15.0, env: dict[str, str] | None = None,
               stdin: int | None = None) -> None:
    """Run a long command with output to `log`; print its last line every `every` seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(argv)}\n".encode())
        fh.flush()
        proc = subprocess.Popen(list(argv), stdout=fh, stderr=subprocess.STDOUT, env=env,
                                stdin=stdin if stdin is not None else subprocess.DEVNULL)
        while True:
            try:
                rc = proc.wait(timeout=every)
                break
            except subprocess.TimeoutExpired:
                progress.say(f"  {label}: {time.monotonic() - start:.0f}s, {_last_line(log)}")
    if rc != 0:
        raise LabError(f"{label} failed (exit {rc}); see {log}:\n{_tail(log, 25)}")


def _last_line(log: Path) -> str:
    lines = _tail(log, 1).strip()
    return (lines[:110] + "...") if len(lines) > 110 else lines


def _tail(log: Path, n: int) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 8192))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.replace("\r", "\n").splitlines()[-n:])


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is not alive for our purposes.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""


def term_pid(pid: int | None, *, expect_in_cmdline: str) -> None:
    """SIGTERM without waiting (stop_pid later waits): to stop many processes at once."""
    if pid and pid_alive(pid) and expect_in_cmdline in pid_cmdline(pid):
        os.kill(pid, 15)


def stop_pid(pid: int, *, expect_in_cmdline: str, timeout: float = 15.0) -> bool:
    """SIGTERM one process by PID (then SIGKILL after `timeout`), only if its command line
    still contains `expect_in_cmdline` (guards against a recycled PID). True if it is gone."""
    if not pid_alive(pid):
        return True
    if expect_in_cmdline not in pid_cmdline(pid):
        return True  # PID reused by something else: not ours any more
    os.kill(pid, 15)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        _reap(pid)
        time.sleep(0.1)
    os.kill(pid, 9)
    time.sleep(0.2)
    _reap(pid)
    return not pid_alive(pid)


def child_pids(pid: int) -> list[int]:
    """The direct children of a process (from /proc/PID/task/*/children)."""
    out: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(p) for p in (task / "children").read_text().split()]
    except OSError:
        pass
    return out


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` (deepest first), from /proc/self/mountinfo."""
    prefix = str(path.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].replace("\\040", " ")
        if mp == prefix or mp.startswith(prefix + "/"):
            found.append(mp)
    return sorted(found, key=len, reverse=True)


def umount_all(path: Path) -> list[str]:
    """Unmount everything at or below `path` (deepest first). Returns problems."""
    problems = []
    for mp in mounts_under(path):
        cp = run(["umount", mp], check=False)
        if cp.returncode != 0:
            problems.append(f"umount {mp}: {cp.stderr.strip()}")
    return problems


def umount_under(path: Path) -> None:
    for mp in mounts_under(path):
        run(["umount", "-l", mp], check=False)
