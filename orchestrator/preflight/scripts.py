"""The shell scripts the preflight runs on each node, and their positional arguments.

Every script is fixed text (POSIX sh) run as `sh -c SCRIPT sh ARG...`: inventory values
(runtime, image, model path, IPs, ports) only ever arrive as positional arguments, so no
value is ever parsed by a shell.  Output sections follow the hw probe format
(`==== key ====` <output> `==== rc N ====`) and are split with `hw.split_probe_output`.

    gather  one round trip per node: identity, tools, runtime, image, NICs, listeners, model,
            disks, /dev/shm, orch containers, vllm processes, shm segments (+ GPU query)
    cross   the second round trip, all nodes at once: pings to the peers' cluster IPs, TCP
            connects to the head's ports (the head opens short-lived listeners), and on
            Ascend `hccn_tool -ping` from each NPU to the peers' NPUs
    clean   remove /dev/shm/vllm-* and psm_* that no process holds (conservative)
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Mapping, Sequence

from ..netinfo import FACTS_SCRIPT

GATHER_MARK = "orch-preflight-gather"
CROSS_MARK = "orch-preflight-cross"
CLEAN_MARK = "orch-preflight-clean"

# Seconds: how long peers retry a TCP connect to the head, how long the head listens.
CONNECT_DEADLINE = 4
LISTEN_DEADLINE = 6

_COMMON = r"""
PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/usr/local/Ascend/driver/tools"
export PATH
have() { command -v "$1" >/dev/null 2>&1; }
lim() { if have timeout; then timeout "$@"; else shift; "$@"; fi; }
run() { key=$1; shift; echo "==== $key ===="; out=$("$@" 2>&1); rc=$?; printf '%s\n' "$out"; echo "==== rc $rc ===="; }
held() {
  if have fuser; then fuser -s "$1" 2>/dev/null; return; fi
  for p in /proc/[0-9]*; do
    grep -qsF "$1" "$p/maps" && return 0
    for fd in "$p"/fd/*; do [ "$(readlink "$fd" 2>/dev/null)" = "$1" ] && return 0; done
  done
  return 1
}
"""

_GATHER = r"""
RT=$1; IMAGE=$2; MODEL=$3
tools() {
  for t in ping python3 perl bash timeout fuser ss du df ps nvidia-smi rocm-smi rsync; do
    p=$(command -v "$t" 2>/dev/null) && echo "$t $p"
  done
  return 0
}
netfacts() { %(facts)s; }
rtinfo() {
  if [ "$RT" = podman ]; then lim 20 podman info --format '{{.Version.Version}}'
  else lim 20 "$RT" info --format '{{.ServerVersion}}'; fi
}
listeners() {
  if have ss; then ss -ltnp; else echo "# /proc/net/tcp"; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; fi
}
modelfacts() {
  case $MODEL in /*) ;; *) echo "not a path"; return 0 ;; esac
  [ -e "$MODEL" ] || { echo "missing"; return 1; }
  if s=$(lim 60 du -sbL -- "$MODEL" 2>/dev/null); then echo "bytes $s"
  else echo "kib $(lim 60 du -skL -- "$MODEL")"; fi
}
disks() {
  case $MODEL in /*) if [ -e "$MODEL" ]; then lim 10 df -Pk / "$MODEL"; return; fi ;; esac
  lim 10 df -Pk /
}
ctrs() {
  ids=$(lim 20 "$RT" ps -a -q --no-trunc --filter label=orch.deployment) || { echo "$ids"; return 1; }
  [ -n "$ids" ] || { echo "[]"; return 0; }
  lim 20 "$RT" inspect $ids
}
procs() {
  ps -eo pid=,args= 2>/dev/null | awk 'tolower($0) ~ /[v]llm/ && $0 !~ /orch-[p]reflight/' |
  while read -r pid args; do
    cg=$(cut -d: -f3- "/proc/$pid/cgroup" 2>/dev/null | sort -u | tr '\n' ' ')
    printf '%%s\t%%s\t%%s\n' "$pid" "$cg" "$args"
  done
  return 0
}
shmfiles() {
  for f in /dev/shm/vllm-* /dev/shm/psm_*; do
    [ -e "$f" ] || continue
    if held "$f"; then s=held; else s=free; fi
    printf '%%s %%s %%s\n' "$s" "$(stat -c %%s "$f" 2>/dev/null || echo 0)" "$f"
  done
  return 0
}
run id id -u
run tools tools
run 'runtime path' command -v "$RT"
run 'runtime info' rtinfo
run image lim 20 "$RT" image inspect --format '{{.Id}}' "$IMAGE"
run net netfacts
run listeners listeners
run model modelfacts
run disks disks
run shm lim 10 df -Pk /dev/shm
run containers ctrs
run procs procs
run shmfiles shmfiles
"""

_GPU_QUERIES = {
    "nvidia": ["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,memory.used",
               "--format=csv,noheader,nounits"],
    "rocm": ["rocm-smi", "--showproductname", "--showdriverversion", "--showmeminfo", "vram",
             "--json"],
}


def gather_script(kind: str, with_net: bool = True) -> str:
    """The round-1 script for a node of profile kind `kind`; args: RUNTIME IMAGE MODEL.
    Without `with_net` it skips the network facts (the session read them already)."""
    body = _GATHER % {"facts": FACTS_SCRIPT}
    if not with_net:
        body = body.replace("run net netfacts\n", "")
    query = _GPU_QUERIES.get(kind)
    if query:
        body += f"run gpu lim 30 {shlex.join(query)}\n"
    return f"# {GATHER_MARK}\n" + _COMMON + body


def gather_args(runtime: str, image: str, model: str) -> list[str]:
    return [runtime, image, model]


_CROSS = r"""
tmp=$(mktemp -d 2>/dev/null) || { tmp=/tmp/orch-preflight.$$; mkdir -m 700 "$tmp" || exit 1; }
trap 'rm -rf "$tmp"' EXIT
n=0
job() { n=$((n + 1)); ( run "$@" ) > "$tmp/$(printf %04d "$n")" 2>&1 & }
raw() { n=$((n + 1)); ( "$@" ) > "$tmp/$(printf %04d "$n")" 2>&1 & }
tcp_try() {  # ip port seconds -> connected (0) | timeout (1) | refused (2) | error (3) | no tool (4)
  if have bash && have timeout; then
    # --norc: under sshd, bash would read ~/.bashrc even with -c (a slow rc, e.g. conda or
    # pyenv init, then eats the deadline and the connect looks like a timeout)
    o=$(timeout "$3" bash --norc --noprofile -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>&1); r=$?
    [ $r -eq 0 ] && { echo connected; return 0; }
    [ $r -eq 124 ] && { echo timeout; return 1; }
    case $o in *efused*) echo refused; return 2 ;; esac
    echo "error: $o"; return 3
  elif have python3; then
    python3 -c '
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), float(sys.argv[3])).close()
    print("connected")
except ConnectionRefusedError:
    print("refused"); sys.exit(2)
except (socket.timeout, TimeoutError):
    print("timeout"); sys.exit(1)
except OSError as e:
    print("error:", e); sys.exit(3)
' "$1" "$2" "$3"
  else echo "no tool: neither bash with timeout nor python3"; return 4; fi
}
tcp_wait() {  # ip port deadline: retry until connected or the deadline passes
  end=$(( $(date +%s) + $3 ))
  while :; do
    o=$(tcp_try "$1" "$2" 1); r=$?
    [ $r -eq 0 ] || [ $r -ge 3 ] && break
    [ "$(date +%s)" -ge "$end" ] && break
    sleep 0.2
  done
  echo "$o"; return $r
}
reach() {  # ip: ping, else a TCP connect to port 22 (connected or refused = reachable)
  if have ping; then lim 5 ping -c 1 -W 1 "$1" || lim 5 ping -c 1 -W 1 "$1"; return; fi
  echo "via tcp (no ping on this node)"
  o=$(tcp_try "$1" 22 2); r=$?; echo "$o"
  [ $r -eq 0 ] || [ $r -eq 2 ]
}
listen() {  # port need deadline: accept until `need` distinct peers connected
  if have python3; then
    python3 -c '
import select, socket, sys, time
port, need, deadline = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", port)); s.listen(16)
except OSError as e:
    print("busy", e.strerror); sys.exit(2)
print("bound python3", flush=True)
seen, end = set(), time.monotonic() + deadline
while len(seen) < need and time.monotonic() < end:
    if select.select([s], [], [], 0.2)[0]:
        c, a = s.accept(); seen.add(a[0]); print("accepted", a[0], flush=True)
        c.settimeout(1)
        try:
            c.recv(1)  # the peer closes first: then no TIME_WAIT stays on this port
        except OSError:
            pass
        c.close()
' "$1" "$2" "$3"
  elif have perl; then
    perl -MIO::Socket::INET -MIO::Select -e '
my ($port, $need, $dl) = @ARGV; $| = 1;
my $s = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => $port, Listen => 16,
                              ReuseAddr => 1, Proto => "tcp") or do { print "busy $!\n"; exit 2 };
print "bound perl\n";
my %seen; my $end = time + $dl; my $sel = IO::Select->new($s);
while (keys(%seen) < $need && time < $end) {
  if ($sel->can_read(0.2)) { my $c = $s->accept or next; my $h = $c->peerhost;
    $seen{$h} = 1; print "accepted $h\n";
    my $r = IO::Select->new($c); if ($r->can_read(1)) { my $b; sysread($c, $b, 1) } close $c; } }
' "$1" "$2" "$3"
  else echo "no tool: neither python3 nor perl to open a test listener"; return 4; fi
}
hping() {  # device ip,ip,...: hccn_tool pings from one NPU, one after the other
  d=$1; old=$IFS; IFS=,; set -- $2; IFS=$old
  for a in "$@"; do run "hccn $d ping $a" lim 30 hccn_tool -i "$d" -ping -g address "$a"; done
}
while [ $# -gt 0 ]; do
  case $1 in
    P) job "ping $2" reach "$2"; shift 2 ;;
    T) job "tcp $2 $3" tcp_wait "$2" "$3" "$4"; shift 4 ;;
    L) job "listen $2" listen "$2" "$3" "$4"; shift 4 ;;
    H) raw hping "$2" "$3"; shift 3 ;;
    *) echo "cross: unknown op $1" >&2; exit 2 ;;
  esac
done
wait
for f in "$tmp"/*; do [ -e "$f" ] && cat "$f"; done
exit 0
"""


def cross_script() -> str:
    """The round-2 script; args are ops built by `cross_args`."""
    return f"# {CROSS_MARK}\n" + _COMMON + _CROSS


def _ip(v: str) -> str:
    return str(ipaddress.ip_address(v))


def cross_args(ping: Sequence[str] = (), connect: Sequence[tuple[str, int]] = (),
               listen: Sequence[tuple[int, int]] = (),
               hccn: Mapping[int, Sequence[str]] | None = None) -> list[str]:
    """Ops for `cross_script`: ping IPs, connect (ip, port), listen (port, peers expected),
    hccn {device: [peer NPU IPs]}. Every IP is validated; each op's values are their own
    argv elements."""
    out: list[str] = []
    for port, need in listen:  # listeners first, so they start before the rest
        out += ["L", str(int(port)), str(int(need)), str(LISTEN_DEADLINE)]
    for ip in ping:
        out += ["P", _ip(ip)]
    for ip, port in connect:
        out += ["T", _ip(ip), str(int(port)), str(CONNECT_DEADLINE)]
    for dev, ips in sorted((hccn or {}).items()):
        if ips:
            out += ["H", str(int(dev)), ",".join(_ip(a) for a in ips)]
    return out


_CLEAN = r"""
now=$(date +%s)
for f in /dev/shm/vllm-* /dev/shm/psm_*; do
  [ -f "$f" ] || continue
  case ${f#/dev/shm/} in *[!A-Za-z0-9_.-]*) echo "skipped $f (odd name)"; continue ;; esac
  age=$(( now - $(stat -c %Y "$f" 2>/dev/null || echo "$now") ))
  if [ "$age" -lt 60 ]; then echo "kept $f (younger than 60s)"; continue; fi
  if held "$f"; then echo "kept $f (in use)"; continue; fi
  rm -f "$f" && echo "removed $f"
done
exit 0
"""


def clean_script() -> str:
    """Remove vLLM shm segments no process holds and older than a minute; no args."""
    return f"# {CLEAN_MARK}\n" + _COMMON + _CLEAN
