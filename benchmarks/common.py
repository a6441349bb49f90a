"""Shared helpers of the benchmark scripts: the lab, inventories, timing, Markdown output.

Every table is measured in one run of one script (the machine is shared and noisy): medians
and ratios in a table always come from the same run.  Nothing here is a test.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks.md"
PY = sys.executable
STATE_DIR = Path(os.environ.get("ORCH_BENCH_STATE_DIR", "/tmp/orch-bench/state"))
WORK = Path(os.environ.get("ORCH_BENCH_WORK", "/tmp/orch-bench"))

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def say(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the machine -------------------------------------------------------------------------

def machine() -> str:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    load = os.getloadavg()[0]
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem_kb / 1048576:.1f} GiB RAM, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"load average at start {load:.1f}")


def busy_cpu_s() -> float:
    """CPU seconds this machine spent busy (all processes) since boot, from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + (f[4] if len(f) > 4 else 0)
    return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")


# --- timing ------------------------------------------------------------------------------

@dataclass
class Run:
    wall: float          # seconds
    cpu: float           # user+sys CPU seconds of the command and its waited-for children
    machine_cpu: float   # busy CPU seconds of the whole machine during the command
    rc: int
    stdout: str
    stderr: str


def timed(argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 900,
          cwd: Path | None = None) -> Run:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m0 = busy_cpu_s()
    t0 = time.perf_counter()
    cp = subprocess.run(list(argv), capture_output=True, text=True, env=env, timeout=timeout,
                        cwd=cwd or ROOT)
    wall = time.perf_counter() - t0
    m1 = busy_cpu_s()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return Run(wall, cpu, m1 - m0, cp.returncode, cp.stdout, cp.stderr)


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: Sequence[float]) -> str:
    return f"{min(xs):.2f}-{max(xs):.2f}" if xs else "-"


def orch_env(**extra: str) -> dict[str, str]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "ORCH_STATE_DIR": str(STATE_DIR), **extra}


def orch_argv(*args: str) -> list[str]:
    return [PY, "-m", "orchestrator", *args]


# --- the lab -----------------------------------------------------------------------------

def lab_busy() -> str | None:
    """Why another engineer's lab work is running now (None: free)."""
    cp = subprocess.run(["pgrep", "-af", "pytest.*tests/lab"], capture_output=True, text=True)
    mine = str(os.getpid())
    # only pytest itself counts: `flock LOCK ... pytest` still waiting for the lock we hold
    # (and its `timeout` wrapper) runs nothing yet
    procs = [ln for ln in cp.stdout.splitlines()
             if ln.split()[0] != mine and "python" in ln.split()[1]]
    if procs:
        return f"lab tests running: {procs[0][:100]}"
    from orchestrator.lab import Lab

    lab = Lab()
    for h in lab.hosts if lab.is_up and lab.runtime == "podman" else []:  # each host's own storage
        cp = lab.run_on(h, ["podman", "ps", "--format", "{{.Names}}"], timeout=60)
        orch = [n for n in cp.stdout.split() if n.startswith("orch-")]
        if orch:
            return f"orch containers running on {h.name}: {', '.join(orch[:4])}"
    return None


def wait_lab_free(poll_s: float = 10, max_s: float = 3600, ours: Sequence[str] = ()) -> None:
    """Wait until no lab test runs and no foreign `orch-` container runs (`ours`: name
    prefixes of this benchmark's own containers, ignored)."""
    t0 = time.monotonic()
    while True:
        why = lab_busy()
        if why and ours and why.startswith("orch containers"):
            names = why.split(": ", 1)[1].split(", ")
            if all(any(n.startswith(p) for p in ours) for n in names):
                why = None
        if not why:
            return
        if time.monotonic() - t0 > max_s:
            raise SystemExit(f"the lab stayed busy for {max_s:.0f}s: {why}")
        say(f"waiting for the lab to be free ({why})")
        time.sleep(poll_s)


_LOCK = None
LOCK_PATH = "/tmp/orch-lab.lock"  # the lock the lab test runs take (flock)


def hold_lab_lock() -> None:
    """Take the lab lock (flock on LOCK_PATH) for the rest of this process."""
    global _LOCK
    import fcntl

    if _LOCK is not None or os.environ.get("ORCH_BENCH_LOCK_HELD") == "1":
        return  # run_all.py holds it for the scripts it runs
    f = open(LOCK_PATH, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say(f"waiting for {LOCK_PATH} (held by another lab user; blocking, in the queue)")
        fcntl.flock(f, fcntl.LOCK_EX)
        say(f"got {LOCK_PATH}")
    _LOCK = f


def lab_up(hosts: int, runtime: str = "podman"):  # type: ignore[no-untyped-def]
    from orchestrator.lab import Lab

    hold_lab_lock()

    lab = Lab()
    if lab.is_up and lab.runtime == runtime and len(lab.hosts) >= hosts:
        st = lab.status()
        if st.get("healthy"):
            say(f"reusing the lab: {len(lab.hosts)} hosts on {runtime}")
            return lab
    wait_lab_free()
    say(f"lab up: {hosts} hosts on {runtime}")
    t0 = time.monotonic()
    lab = Lab().up(hosts=hosts, runtime=runtime, replace=True, quiet=True)
    say(f"lab up took {time.monotonic() - t0:.1f}s")
    return lab


def lab_down() -> None:
    from orchestrator.lab import Lab

    hold_lab_lock()
    wait_lab_free()
    say("lab down")
    problems = Lab().down(quiet=True)
    if problems:
        say(f"lab down problems: {problems}")


# --- the login shell's rc files on lab hosts -------------------------------------------
# sshd runs every command through root's login shell, `bash -c CMD`; Debian's bash then
# sources ~/.bashrc (SSH_SOURCE_BASHRC).  On this machine root's ~/.bashrc runs
# `pyenv init -`, i.e. `pyenv rehash`: ~0.3 s of CPU per exec, under one lock file that
# every lab host shares (the hosts share one filesystem), so concurrent execs serialize.
# "norc" gives the lab's ssh sessions SHLVL=1 (sshd SetEnv), so bash skips ~/.bashrc;
# "as-is" is the lab as `orch lab up` makes it.  Both are restored by set_shell(lab, "as-is").
SHELL_MODES = ("as-is", "norc")


def set_shell(lab, mode: str) -> None:  # type: ignore[no-untyped-def]
    import signal

    for h in lab.hosts:
        p = Path(h.dir) / "sshd_config"
        lines = p.read_text().splitlines()
        out = []
        for ln in lines:
            if ln.startswith("SetEnv "):
                ln = ln.replace(" SHLVL=1", "")
                if mode == "norc":
                    ln += " SHLVL=1"
            out.append(ln)
        text = "\n".join(out) + "\n"
        if text != p.read_text():
            p.write_text(text)
            if h.sshd_pid:
                os.kill(h.sshd_pid, signal.SIGHUP)  # sshd re-executes itself, same PID
    time.sleep(0.5)


def pyenv_stale_lock() -> bool:
    """Remove pyenv's rehash lock when no rehash runs (a killed rehash leaves it behind and
    every later bash login then waits 60 s).  True when one was removed."""
    lock = Path.home() / ".pyenv" / "shims" / ".pyenv-shim"
    if not lock.exists():
        return False
    if subprocess.run(["pgrep", "-f", "pyenv-rehash"], capture_output=True).returncode == 0:
        return False
    try:
        if time.time() - lock.stat().st_mtime < 5:
            return False
        lock.unlink()
    except OSError:
        return False
    say(f"removed a stale pyenv rehash lock {lock} (left by a killed `pyenv rehash`)")
    return True


def podman(lab, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    """podman as on the first lab host (its CONTAINERS_CONF and storage)."""
    return lab.run_on(lab.hosts[0], ["podman", *args], timeout=timeout)


def inventory(lab, n: int, deployment: str, dp: int | None = None, path: Path | None = None,
              playbook: str = "cpu-lab-dp", persist: int | None = None) -> Path:  # type: ignore[no-untyped-def]
    """An inventory over the first n lab hosts; data parallel = dp (default n); `persist`:
    its ssh.persist (default: orch's)."""
    from orchestrator.lab.inventory import render_inventory

    text = render_inventory(lab.hosts, lab.runtime, nodes=n, deployment=deployment,
                            playbook=playbook)
    if persist is not None:
        text = text.replace("\nssh:\n", f"\nssh:\n  persist: {persist}\n", 1)
    dp = n if dp is None else dp
    if dp != 2 or playbook != "cpu-lab-dp":
        text += f"overrides:\n  data_parallel: {dp}\n"
    p = path or (WORK / "inventories" / f"{deployment}.yaml")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


# --- Markdown ----------------------------------------------------------------------------

def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:.2f}"
        return str(v)

    out = ["| " + " | ".join(headers) + " |",
           "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |"]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def header(title: str, command: str) -> str:
    today = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=ROOT).stdout.strip()
    return (f"### {title}\n\n"
            f"- command: `{command}`\n- date: {today}, orch at commit {commit}\n"
            f"- machine: {machine()}\n")


def this_command() -> str:
    args = [a.replace(str(ROOT) + "/", "") for a in sys.argv]
    return " ".join(shlex.quote(a) for a in ["python", *args])


def publish(key: str, markdown: str, write: bool = True) -> None:
    """Print the section and put it in docs/benchmarks.md between its markers (replacing the
    previous one of the same key, else appending)."""
    print(markdown, flush=True)
    if not write:
        return
    begin, end = f"<!-- bench:{key} begin -->", f"<!-- bench:{key} end -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    pat = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pat.search(text):
        text = pat.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(text if text.endswith("\n") else text + "\n")
    say(f"wrote section {key} in {DOCS.relative_to(ROOT)}")


def wait_keeper(inv: Path, env: dict[str, str], timeout: float = 120) -> None:
    """Wait until the keeper of this inventory answers (started by a plain `orch status`)."""
    code = ("import asyncio,sys; from pathlib import Path; from orchestrator import keeper; "
            "from orchestrator.cluster import Deployment; "
            "sys.exit(asyncio.run(keeper.snapshot(Deployment.load(Path(sys.argv[1])))) is None)")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if subprocess.run([PY, "-c", code, str(inv)], env=env, cwd=ROOT).returncode == 0:
            return
        time.sleep(1)
    raise SystemExit(f"no keeper answers for {inv}")


def stop_keepers() -> None:
    """End the keepers the benchmark's `orch status` runs left (by their recorded PIDs)."""
    from orchestrator import keeper

    pids = keeper.stop(base=STATE_DIR)
    if pids:
        say(f"stopped keepers {pids}")


def dump(name: str, data: object) -> Path:
    """Raw measurements as JSON under WORK/results (not committed)."""
    p = WORK / "results" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=1, default=str))
    return p
