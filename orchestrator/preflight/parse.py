"""Parsers of the preflight scripts' output (pure: text in, dataclasses out).

Each parser tolerates what real hosts print (missing tools, old iproute2 without -H, busybox
df) and turns it into facts; deciding pass/warn/fail is `verdicts.py`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..hw import ProbeOutput, split_probe_output
from ..netinfo import NetFacts, parse_facts
from ..runtime import Container, Look, parse_inspect, parse_objects
from .scripts import SIZED_BY_MANIFEST


@dataclass(frozen=True)
class Listener:
    """One listening TCP socket."""

    addr: str  # local address as printed ("0.0.0.0", "[::]", "10.0.0.1", "*")
    port: int
    process: str = ""  # e.g. 'python3 pid 4242' when ss could tell (root)


@dataclass(frozen=True)
class Disk:
    mount: str
    avail_bytes: int
    size_bytes: int


@dataclass(frozen=True)
class Proc:
    """A process whose command line mentions vllm."""

    pid: int
    args: str
    container_ids: tuple[str, ...]  # 64-hex ids in its cgroup path; () = on the host
    in_container: bool  # its cgroup looks like a container's (docker/libpod/containerd)


@dataclass(frozen=True)
class ShmFile:
    path: str
    size: int
    held: bool  # some process has it open or mapped


@dataclass
class NodeFacts:
    """What the gather script found on one node. `None`: the section was absent or broken."""

    uid: int | None = None
    tools: dict[str, str] = field(default_factory=dict)  # tool -> path
    runtime_path: str | None = None
    runtime_info: ProbeOutput | None = None
    image: ProbeOutput | None = None
    net: NetFacts | None = None
    net_error: str = ""
    listeners: list[Listener] | None = None
    model: str = ""  # "not a path" | "missing" | "ok" | "error: ..."
    model_bytes: int | None = None
    disks: list[Disk] = field(default_factory=list)
    shm: Disk | None = None
    containers: list[Container] | None = None
    containers_error: str = ""
    procs: list[Proc] = field(default_factory=list)
    shm_files: list[ShmFile] = field(default_factory=list)
    gpu: ProbeOutput | None = None
    manifest: str | None = None  # the manifest script's output, when it was asked for
    complete: bool = False  # the last section arrived (the script was not cut off)


def _text(sec: ProbeOutput | None) -> str:
    return sec.text.strip() if sec else ""


Sections = dict[tuple[str, ...], ProbeOutput]  # a script's output split (hw.split_probe_output)


def parse_gather(text: str | Sections, net_facts: str | None = None) -> NodeFacts:
    """The gather script's output (or its sections, split once for gather and cross ops);
    `net_facts`: the node's network facts read before (the script then had no `net` section)."""
    split = split_probe_output(text) if isinstance(text, str) else text
    secs = {" ".join(k): v for k, v in split.items()}
    if net_facts is not None:
        secs["net"] = ProbeOutput(net_facts, 0)
    f = NodeFacts()
    sid = secs.get("id")
    if sid and sid.rc == 0 and _text(sid).isdigit():
        f.uid = int(_text(sid))
    for line in _text(secs.get("tools")).splitlines():
        name, _, path = line.partition(" ")
        if path.strip():
            f.tools[name] = path.strip()
    rp = secs.get("runtime path")
    f.runtime_path = _text(rp) if rp and rp.rc == 0 and _text(rp) else None
    _runtime_sections(f, secs)
    net = secs.get("net")
    if net is not None:
        try:
            f.net = parse_facts(net.text)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            f.net_error = f"cannot parse `ip -j addr`: {exc}"
    lst = secs.get("listeners")
    if lst is not None and lst.rc == 0:
        f.listeners = parse_listeners(lst.text)
    f.model, f.model_bytes = parse_model(secs.get("model"))
    disks = secs.get("disks")
    f.disks = list({d.mount: d for d in parse_df(disks.text)}.values()) if disks else []
    shm = secs.get("shm")
    shm_rows = parse_df(shm.text) if shm and shm.rc == 0 else []
    f.shm = shm_rows[0] if shm_rows else None
    mf = secs.get("manifest")
    f.manifest = mf.text if mf is not None else None
    f.procs = parse_procs(_text(secs.get("procs")))
    f.shm_files = parse_shm_files(_text(secs.get("shmfiles")))
    f.gpu = secs.get("gpu")
    last = secs.get("shmfiles")
    f.complete = last is not None and last.rc is not None
    return f


def _runtime_sections(f: NodeFacts, secs: dict[str, ProbeOutput]) -> None:
    """The runtime's version, the image's ID and the orch containers, as the CLI printed them."""
    f.runtime_info = secs.get("runtime info")
    f.image = secs.get("image")
    ctr = secs.get("containers")
    if ctr is not None:
        if ctr.rc == 0:
            try:
                f.containers = parse_inspect(ctr.text)
            except (ValueError, AttributeError, TypeError) as exc:
                f.containers_error = f"cannot parse inspect output: {exc}"
        else:
            f.containers_error = _text(ctr)[-300:]


def fill_runtime(f: NodeFacts, text: str) -> None:
    """The `runtime` script's output (the CLI's sections, run apart from the gather)."""
    _runtime_sections(f, {" ".join(k): v for k, v in split_probe_output(text).items()})


def fill_from_api(f: NodeFacts, look: Look) -> None:
    """The runtime's answers through its API, in the shape the CLI's sections have."""
    if isinstance(look.version, Exception):
        f.runtime_info = ProbeOutput(f"its API socket: {look.version}", 1)
    else:
        f.runtime_info = ProbeOutput(look.version or "(the API names no version)", 0)
    if isinstance(look.image_id, Exception):
        f.image = ProbeOutput(str(look.image_id), 1)
    else:
        f.image = ProbeOutput(look.image_id or "no such image", 0 if look.image_id else 1)
    if isinstance(look.containers, Exception):
        f.containers, f.containers_error = None, str(look.containers)[-300:]
    else:
        try:
            f.containers = parse_objects(look.containers)
        except (ValueError, AttributeError, TypeError) as exc:
            f.containers, f.containers_error = None, f"cannot parse the API's inspect objects: {exc}"


def parse_model(sec: ProbeOutput | None) -> tuple[str, int | None]:
    t = _text(sec)
    if sec is None:
        return "error: no output", None
    if t == "not a path":
        return "not a path", None
    if t == "missing":
        return "missing", None
    if t == SIZED_BY_MANIFEST:  # the size comes from the manifest section (runner)
        return "ok", None
    m = re.match(r"^(bytes|kib)\s+(\d+)", t)
    if m:
        n = int(m[2]) * (1024 if m[1] == "kib" else 1)
        return ("ok" if sec.rc == 0 else f"error: du exited {sec.rc}"), n
    return f"error: {t[-200:] or f'exit {sec.rc}'}", None


_PROC_USERS = re.compile(r'users:\(\("(?P<name>[^"]*)",pid=(?P<pid>\d+)')


def _split_hostport(s: str) -> tuple[str, int] | None:
    host, sep, port = s.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host, int(port)


def parse_listeners(text: str) -> list[Listener]:
    """`ss -ltnp` (with or without a header) or `# /proc/net/tcp` + its raw tables."""
    lines = text.splitlines()
    if lines and lines[0].startswith("# /proc/net/tcp"):
        return parse_proc_net_tcp("\n".join(lines[1:]))
    out = []
    for line in lines:
        cols = line.split()
        if len(cols) < 4 or cols[0] in ("State", "Netid"):
            continue
        # "LISTEN 0 128 10.0.0.1:22 0.0.0.0:* users:((...))"; some ss print a Netid column
        i = 1 if cols[0] == "LISTEN" else 2 if len(cols) > 1 and cols[1] == "LISTEN" else None
        if i is None or len(cols) < i + 3:
            continue
        hp = _split_hostport(cols[i + 2])
        if hp is None:
            continue
        m = _PROC_USERS.search(line)
        out.append(Listener(hp[0].split("%")[0], hp[1], f"{m['name']} pid {m['pid']}" if m else ""))
    return out


def parse_proc_net_tcp(text: str) -> list[Listener]:
    """/proc/net/tcp and tcp6 rows in state 0A (LISTEN)."""
    out = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 4 or cols[0] == "sl" or cols[3] != "0A":
            continue
        addr, _, port = cols[1].partition(":")
        try:
            p = int(port, 16)
        except ValueError:
            continue
        if len(addr) == 8:
            a = ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0))
        else:
            a = "::" if set(addr) == {"0"} else addr.lower()
        out.append(Listener(a, p))
    return out


def parse_df(text: str) -> list[Disk]:
    """`df -Pk` rows (1024-byte blocks; the mount point is the last column)."""
    out = []
    for line in text.splitlines():
        cols = line.split()
        if len(cols) < 6 or not cols[1].isdigit() or not cols[3].isdigit():
            continue
        out.append(Disk(" ".join(cols[5:]), int(cols[3]) * 1024, int(cols[1]) * 1024))
    return out


_CID = re.compile(r"(?<![0-9a-f])([0-9a-f]{64})(?![0-9a-f])")
_CONTAINER_CG = re.compile(r"docker|libpod|containerd|crio|kubepods|machine\.slice/libpod")


def parse_procs(text: str) -> list[Proc]:
    """`pid<TAB>cgroup lines<TAB>args` rows; keeps the ones that run vLLM itself."""
    out = []
    for line in text.splitlines():
        parts = line.split("\t", 2)
        if len(parts) != 3 or not parts[0].strip().isdigit():
            continue
        pid, cg, args = int(parts[0]), parts[1], parts[2].strip()
        if not is_vllm(args):
            continue
        ids = tuple(dict.fromkeys(_CID.findall(cg)))
        out.append(Proc(pid, args, ids, bool(ids) or bool(_CONTAINER_CG.search(cg))))
    return out


def is_vllm(args: str) -> bool:
    """A vLLM server or engine process: `vllm serve ...`, `python /x/bin/vllm ...`,
    `python -m vllm.entrypoints...`, or a `VLLM::EngineCore` process title. Not a shell or a
    `docker run` whose arguments merely contain "vllm serve"."""
    toks = args.split()
    if not toks:
        return False
    if toks[0].upper().startswith("VLLM::"):
        return True
    exe = toks[0].rsplit("/", 1)[-1]
    if exe == "vllm":
        return True
    if re.fullmatch(r"python[\d.]*", exe):
        rest = toks[1:]
        while rest and rest[0].startswith("-") and rest[0] != "-m":
            rest = rest[2:] if rest[0] in ("-X", "-W") else rest[1:]
        if rest and rest[0] == "-m":
            return len(rest) > 1 and (rest[1] == "vllm" or rest[1].startswith("vllm."))
        return bool(rest) and rest[0].rsplit("/", 1)[-1] == "vllm"
    return False


def parse_shm_files(text: str) -> list[ShmFile]:
    out = []
    for line in text.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] in ("held", "free") and parts[1].isdigit():
            out.append(ShmFile(parts[2], int(parts[1]), parts[0] == "held"))
    return out


# ------------------------------------------------------------------------- cross


@dataclass(frozen=True)
class Reach:
    ok: bool
    how: str  # "ping" | "tcp" | "none"
    detail: str


@dataclass
class CrossFacts:
    pings: dict[str, Reach] = field(default_factory=dict)  # ip -> result
    connects: dict[tuple[str, int], str] = field(default_factory=dict)  # -> connected/...
    listens: dict[int, list[str]] = field(default_factory=dict)  # port -> output lines
    hccn: str = ""  # the `hccn D ping IP` sections, verbatim, for the Ascend parser


def parse_cross(text: str | Sections) -> CrossFacts:
    """The cross ops' sections of a script's output (or of its sections, split already)."""
    out = CrossFacts()
    hccn_parts = []
    for key, sec in (split_probe_output(text) if isinstance(text, str) else text).items():
        body = sec.text.strip()
        if key[0] == "ping" and len(key) == 2:
            how = "tcp" if "via tcp" in body else "ping"
            if sec.rc is None:
                out.pings[key[1]] = Reach(False, how, "cut off")
            elif "no tool" in body:
                out.pings[key[1]] = Reach(False, "none", body.splitlines()[-1])
            else:
                out.pings[key[1]] = Reach(sec.rc == 0, how, body.splitlines()[-1] if body else "")
        elif key[0] == "tcp" and len(key) == 3 and key[2].isdigit():
            last = body.splitlines()[-1] if body else f"exit {sec.rc}"
            out.connects[(key[1], int(key[2]))] = last
        elif key[0] == "listen" and len(key) == 2 and key[1].isdigit():
            out.listens[int(key[1])] = body.splitlines()
        elif key[0] == "hccn":
            hccn_parts.append(f"==== {' '.join(key)} ====\n{sec.text}==== rc {sec.rc} ====\n"
                              if sec.rc is not None else f"==== {' '.join(key)} ====\n{sec.text}")
    out.hccn = "".join(hccn_parts)
    return out


def image_id(sec: ProbeOutput | None) -> str | None:
    """The image's ID without its `sha256:` prefix (docker's CLI and the API print it, podman's
    CLI does not): IDs read either way compare equal."""
    t = _text(sec)
    if sec is None or sec.rc != 0 or not t:
        return None
    return t.splitlines()[0].strip().removeprefix("sha256:")


def shm_size_bytes(value: str | None) -> int | None:
    """docker/podman --shm-size syntax: 64m, 1g, 500g, 1024 (bytes), 2gb."""
    if not value:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*", value.lower())
    if not m:
        return None
    mult = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}[m[2]]
    return int(float(m[1]) * mult)


def human(n: int | None) -> str:
    if n is None:
        return "?"
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{n} B"

