"""The shell scripts the preflight runs on each node, and their positional arguments.

Every script is fixed text (POSIX sh) run as `sh -c SCRIPT sh ARG...`: inventory values
(runtime, image, model path, IPs, ports) only ever arrive as positional arguments, so no
value is ever parsed by a shell.  Output sections follow the hw probe format
(`==== key ====` <output> `==== rc N ====`) and are split with `hw.split_probe_output`.

    gather  one round trip per node: identity, tools, runtime, image, NICs, listeners, model
            (and its manifest), disks, /dev/shm, orch containers, vllm processes, shm segments
            (+ GPU query); where the runtime's API socket answers, the runtime's version, the
            image and the containers come from there instead (no runtime CLI runs), and the
            `runtime` script asks the CLI only where it does not
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
from ..stage.manifest import cache_key

GATHER_MARK = "orch-preflight-gather"
CROSS_MARK = "orch-preflight-cross"
CLEAN_MARK = "orch-preflight-clean"
RUNTIME_MARK = "orch-preflight-runtime"
SIZED_BY_MANIFEST = "sized by the manifest"  # the model section, when the manifest is gathered

# Seconds: how long peers retry a TCP connect to the head, how long the head listens.  The
# head's listener and its peers' connects start in execs of their own, on all nodes at once:
# under load (64 nodes on 2 cores) one can start seconds after the other.  Both end as soon as
# every expected peer connected, so a long deadline costs time only when a link is broken.
CONNECT_DEADLINE = 12
LISTEN_DEADLINE = 20

_COMMON = r"""
PATH="$PATH:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/usr/local/Ascend/driver/tools"
export PATH
have() { command -v "$1" >/dev/null 2>&1; }
lim() { if have timeout; then timeout "$@"; else shift; "$@"; fi; }
# a section: its command in this shell (no subshell to capture it: a fork less per section),
# then an empty line, so that the end mark starts a line even after output without a newline
run() { key=$1; shift; echo "==== $key ===="; "$@" 2>&1; rc=$?; echo; echo "==== rc $rc ===="; }
held() {
  if have fuser; then fuser -s "$1" 2>/dev/null; return; fi
  for p in /proc/[0-9]*; do
    grep -qsF "$1" "$p/maps" && return 0
    for fd in "$p"/fd/*; do [ "$(readlink "$fd" 2>/dev/null)" = "$1" ] && return 0; done
  done
  return 1
}
"""

_GATHER_DEFS = r"""
RT=$1; IMAGE=$2; MODEL=$3; PORTS=$4; MSCRIPT=$5; CDIR=$6; MKEY=$7
tools() {  # "name path", or "name " when missing (no subshell per tool)
  for t in ping python3 perl bash timeout fuser ss du df ps nvidia-smi rocm-smi rsync; do
    printf '%%s ' "$t"; command -v "$t" 2>/dev/null || echo
  done
  return 0
}
netfacts() {
%(facts)s
}
listeners() {  # `ss -p` reads every process's fds: only when a planned port is taken
  if have ss; then
    out=$(ss -ltn) || { printf '%%s\n' "$out"; return 1; }
    for p in $PORTS; do case $out in *":$p "*) ss -ltnp; return ;; esac; done
    printf '%%s\n' "$out"
  else echo "# /proc/net/tcp"; cat /proc/net/tcp /proc/net/tcp6 2>/dev/null; fi
}
manifest() ( set -- "$MODEL" "$CDIR"; eval "$MSCRIPT" 2>/dev/null )  # its own subshell
modelfacts() {
  case $MODEL in /*) ;; *) echo "not a path"; return 0 ;; esac
  [ -e "$MODEL" ] || { echo "missing"; return 1; }
  # the manifest lists every file with its size: no second walk of the directory with du
  [ -n "$MSCRIPT" ] && { echo "%(sized)s"; return 0; }
  if s=$(lim 60 du -sbL -- "$MODEL" 2>/dev/null); then echo "bytes $s"
  else echo "kib $(lim 60 du -skL -- "$MODEL")"; fi
}
uid() {  # the effective uid from /proc/self/status (the Uid line: real effective saved fs)
  if [ -r /proc/self/status ]; then
    while read -r k _ e _; do [ "$k" = Uid: ] && { echo "$e"; return 0; }; done < /proc/self/status
  fi
  id -u
}
disks() {
  case $MODEL in /*) if [ -e "$MODEL" ]; then lim 10 df -Pk / "$MODEL"; return; fi ;; esac
  lim 10 df -Pk /
}
procs() {  # grep reads only the command lines (`ps` costs 4x as much CPU); '[v]llm' so that
  # the grep does not find its own command line.  This script's own processes (their command
  # lines name vllm: its text, the image) begin with its mark: the first line of a command
  # line (`read` drops the NULs between the arguments) tells them apart without a second grep
  set -- $(grep -lis '[v]llm' /proc/[0-9]*/cmdline 2>/dev/null)
  for f do
    first=; IFS= read -r first < "$f" 2>/dev/null
    case $first in *orch-preflight*) continue ;; esac
    d=${f%%/cmdline}
    args=$(tr '\000\n\t' '   ' < "$f" 2>/dev/null) || continue
    [ -n "$args" ] || continue
    cg=$(cut -d: -f3- "$d/cgroup" 2>/dev/null | sort -u | tr '\n' ' ')
    printf '%%s\t%%s\t%%s\n' "${d#/proc/}" "$cg" "$args"
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
"""

# Who listens on the planned ports: in check_script read before orch's own test listeners start
_LISTENERS = '[ -n "$PORTS" ] && run listeners listeners\n'

_GATHER_RUNS = r"""
NL='
'
run id uid
run tools tools
run 'runtime path' command -v "$RT"
#runtime
run net netfacts
run model modelfacts
walked=  # the manifest just read the model's directory: its filesystem answers
[ -n "$MSCRIPT" ] && { run manifest manifest; [ "$rc" = 0 ] && walked=1; }
# one df for both sections (a row per operand, in order: /, the model's, /dev/shm last); the
# two of them apart when it fails (a hung or missing mount then shows in its own section).  A
# time limit only for a model's filesystem that was not just read (a hung NFS server)
set -- /
case $MODEL in /*) [ -e "$MODEL" ] && set -- / "$MODEL" ;; esac
dfl=; [ $# -gt 1 ] && [ -z "$walked" ] && dfl="lim 10"
# shellcheck disable=SC2086  # dfl: empty, or the two words of `lim 10`
if dfo=$($dfl df -Pk "$@" /dev/shm 2>&1); then
  printf '==== disks ====\n%s\n==== rc 0 ====\n' "${dfo%"$NL"*}"
  printf '==== shm ====\n%s\n%s\n==== rc 0 ====\n' "${dfo%%"$NL"*}" "${dfo##*"$NL"}"
else
  run disks disks
  run shm lim 10 df -Pk /dev/shm
fi
run procs procs
run shmfiles shmfiles
"""

# The runtime's sections: in the gather where the runtime's API cannot be reached, else
# answered by the API (RuntimeApi.look); alone as the `runtime` script when the API turned out
# to be unreachable only while the gather ran.
_RUNTIME = r"""
rtinfo() {
  if [ "$RT" = podman ]; then lim 20 podman info --format '{{.Version.Version}}'
  else lim 20 "$RT" info --format '{{.ServerVersion}}'; fi
}
ctrs() {
  ids=$(lim 20 "$RT" ps -a -q --no-trunc --filter label=orch.deployment) || { echo "$ids"; return 1; }
  [ -n "$ids" ] || { echo "[]"; return 0; }
  lim 20 "$RT" inspect $ids
}
run 'runtime info' rtinfo
run image lim 20 "$RT" image inspect --format '{{.Id}}' "$IMAGE"
run containers ctrs
"""

_GPU_QUERIES = {
    "nvidia": ["nvidia-smi", "--query-gpu=index,name,driver_version,memory.total,memory.used",
               "--format=csv,noheader,nounits"],
    "rocm": ["rocm-smi", "--showproductname", "--showdriverversion", "--showmeminfo", "vram",
             "--json"],
}


def _gather_parts(kind: str, with_net: bool, runtime_cli: bool) -> tuple[str, str]:
    """The gather's definitions (they read `gather_args`) and its sections, the planned ports'
    listeners apart (`_LISTENERS`)."""
    runs = _GATHER_RUNS
    if not with_net:
        runs = runs.replace("run net netfacts\n", "")
    runs = runs.replace("#runtime\n", _RUNTIME.lstrip("\n") if runtime_cli else "")
    query = _GPU_QUERIES.get(kind)
    if query:
        runs += f"run gpu lim 30 {shlex.join(query)}\n"
    return _GATHER_DEFS % {"facts": FACTS_SCRIPT, "sized": SIZED_BY_MANIFEST}, runs


def gather_script(kind: str, with_net: bool = True, runtime_cli: bool = True) -> str:
    """The round-1 script for a node of profile kind `kind`; args: `gather_args`.
    Without `with_net` it skips the network facts (the session read them already); without
    `runtime_cli` the runtime's sections (the API answers them)."""
    defs, runs = _gather_parts(kind, with_net, runtime_cli)
    return f"# {GATHER_MARK}\n" + _COMMON + defs + _LISTENERS + runs


def check_script(kind: str, with_net: bool = True, runtime_cli: bool = True) -> str:
    """The gather and the cross ops in one exec, when the cross ops are known before the
    gather (every node's cluster IP is in the plan); args: `gather_args` + `cross_args`.
    A node that only dials (and pings): the gather's sections, then its cross ops, straight to
    the output.  A node that listens (or pings NPUs, or has no bash): the planned ports'
    listeners are read first (so that `ss` does not see orch's own test listeners), then the
    cross ops start in the background and the gather runs beside them; every section goes to
    a file and all are printed at the end (a listener's `ready` line is the only thing written
    before)."""
    defs, runs = _gather_parts(kind, with_net, runtime_cli)
    return (f"# {GATHER_MARK} {CROSS_MARK}\n" + _COMMON + defs + f"shift {GATHER_NARGS}\n"
            + _CROSS_DEFS + _CROSS_RUN + "gather() {\n" + runs + "}\n"
            + 'if [ -n "$fg" ]; then\n' + _LISTENERS + 'gather\nforeground "$@"\nexit 0\nfi\n'
            + "mktmp\n{ " + _LISTENERS.rstrip("\n") + "; } > \"$tmp/0001\" 2>&1\n"
            + 'background "$@"\ngather > "$tmp/0002" 2>&1\n'
            + "wait\ncat \"$tmp\"/*\nexit 0\n")


def runtime_script() -> str:
    """The runtime's sections alone (version, image ID, orch containers) through its CLI;
    args: `gather_args` (only RUNTIME and IMAGE are read)."""
    return f"# {RUNTIME_MARK}\n" + _COMMON + "RT=$1; IMAGE=$2\n" + _RUNTIME


GATHER_NARGS = 7  # gather_args' count: check_script's cross ops follow them


def gather_args(runtime: str, image: str, model: str, ports: Sequence[int] = (),
                manifest: Sequence[str] = ()) -> list[str]:
    """RUNTIME IMAGE MODEL PORTS MANIFEST_SCRIPT CACHE_DIR CACHE_KEY: `ports`, the node's
    planned ports (who holds one is asked only when one is taken); `manifest`, (script, cache
    dir) of the model's manifest, gathered as one more section (none when empty), with the key
    of the model's cache file (manifest.cache_key: the node hashes the path only where it is
    not the directory's real path)."""
    script, cache = manifest if manifest else ("", "")
    key = cache_key(model) if script else ""
    return [runtime, image, model, " ".join(str(int(p)) for p in ports), script, cache, key]


_CROSS_DEFS = r"""
sec() { key=$1; shift; echo "==== $key ===="; "$@" 2>&1; rc=$?; echo; echo "==== rc $rc ===="; }
job() { n=$((n + 1)); sec "$@" > "$tmp/$n" 2>&1 & }
raw() { n=$((n + 1)); "$@" > "$tmp/$n" 2>&1 & }
pings() {  # ip...: one after the other in one job (a peer that answers takes a millisecond)
  for ip in "$@"; do sec "ping $ip" reach "$ip"; done
}
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
conns() {  # ip port deadline ...: every connect of the node at once in one bash, a subshell
  # each, read back in order through a pipe (no files); a refused connect is retried until its
  # deadline (the listener may start later), one that hangs is cut at the deadline (the same
  # for all: cross_args) and reported as a timeout; then a ping of each peer none of whose
  # connects was answered
  bash --norc --noprofile -c '
    [ "${BASH_VERSINFO[0]}${BASH_VERSINFO[1]}" -ge 41 ] 2>/dev/null || {
      while [ $# -gt 0 ]; do
        printf "==== tcp %s %s ====\nno tool: bash %s is older than 4.1\n==== rc 4 ====\n" "$1" "$2" "$BASH_VERSION"
        shift 3
      done; exit 0; }
    n=0; declare -A answered=()
    while [ $# -gt 0 ]; do
      exec {fd}< <(exec 2>&1; end=$((SECONDS + $3 - 1)); echo "$BASHPID"
        until : 3<>"/dev/tcp/$1/$2"; do  # bash says why it failed (on this pipe)
          [ "$SECONDS" -ge "$end" ] && { echo "gave up"; exit 2; }
          sleep 0.2
        done
        echo connected)
      fds[n]=$fd; keys[n]="$1 $2"; dl=$3; n=$((n + 1)); shift 3
    done
    end=$((SECONDS + dl))
    for ((i = 0; i < n; i++)); do
      pid=; IFS= read -r -t "$dl" -u "${fds[i]}" pid
      res= why=
      until [ -n "$res" ]; do
        left=$((end - SECONDS)); [ "$left" -gt 0 ] || left=0.1
        if IFS= read -r -t "$left" -u "${fds[i]}" l; then
          case $l in
            connected) res="connected 0" ;;
            "gave up") res="refused 2" ;;
            *efused*) ;;
            *) why="error: $l"; res="error 3" ;;
          esac
        elif [ $? -gt 128 ]; then res="timeout 1"
        else res="timeout 1"; why="error: the connect ended without a result"
        fi
      done
      case $res in
        connected*|refused*) answered[${keys[i]% *}]=1 ;;
        *) [ -n "$pid" ] && kill "$pid" 2>/dev/null ;;
      esac
      printf "==== tcp %s ====\n%s\n==== rc %s ====\n" "${keys[i]}" "${why:-${res% *}}" "${res##* }"
    done
    # a peer that answered none of its connects is pinged now (orch pings no peer it dials):
    # down, or only its ports closed off?
    command -v ping >/dev/null 2>&1 || exit 0
    for ((i = 0; i < n; i++)); do
      ip=${keys[i]% *}
      [ -n "${answered[$ip]}" ] && continue
      answered[$ip]=1
      printf "==== ping %s ====\n" "$ip"
      ping -c 1 -W 1 -w 2 "$ip" 2>&1 || ping -c 1 -W 1 -w 2 "$ip" 2>&1
      printf "\n==== rc %s ====\n" "$?"
    done' sh "$@"
}
tcp_wait() {  # ip port deadline, where bash or timeout is missing: python3 retries the connect
  if have python3; then
    python3 -c '
import socket, sys, time
ip, port, end = sys.argv[1], int(sys.argv[2]), time.monotonic() + float(sys.argv[3])
while True:
    left = end - time.monotonic()
    try:
        socket.create_connection((ip, port), max(0.2, min(1.0, left))).close()
        print("connected"); sys.exit(0)
    except ConnectionRefusedError:
        if left <= 0.2:
            print("refused"); sys.exit(2)
        time.sleep(0.2)
    except (socket.timeout, TimeoutError):
        if time.monotonic() >= end:
            print("timeout"); sys.exit(1)
    except OSError as e:
        print("error:", e); sys.exit(3)
' "$1" "$2" "$3"
  else echo "no tool: neither bash with timeout nor python3"; return 4; fi
}
reach() {  # ip: ping, else a TCP connect to port 22 (connected or refused = reachable)
  # -w: ping's own deadline (iputils, busybox, inetutils), no `timeout` process around it
  if have ping; then ping -c 1 -W 1 -w 2 "$1" || ping -c 1 -W 1 -w 2 "$1"; return; fi
  echo "via tcp (no ping on this node)"
  o=$(tcp_try "$1" 22 2); r=$?; echo "$o"
  [ $r -eq 0 ] || [ $r -eq 2 ]
}
listen() {  # port need deadline: accept until `need` distinct peers connected (a connection
  # that sends data is a client of the port, e.g. a router's health check of a replica being
  # redeployed there, and is not counted: it would end the listener before orch's connect
  # from the same node arrives, which then looks refused); once bound
  # (or failed to), `==== ready PORT ====` goes to fd 9, the script's stdout: orch starts
  # the peers' connects when it reads that
  if have python3; then
    python3 -c '
import os, select, socket, sys, time
port, need, deadline = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
def ready():
    try:
        os.write(9, b"==== ready %d ====\n==== rc 0 ====\n" % port)
    except OSError:
        pass
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("0.0.0.0", port)); s.listen(256)  # every peer connects at once
except OSError as e:
    ready(); print("busy", e.strerror); sys.exit(2)
print("bound python3", flush=True)
ready()
seen, end = set(), time.monotonic() + deadline
while len(seen) < need and time.monotonic() < end:
    if select.select([s], [], [], 0.2)[0]:
        c, a = s.accept()
        c.settimeout(1)
        try:
            b = c.recv(1)  # the peer closes first: then no TIME_WAIT stays on this port
        except OSError:
            b = b""
        c.close()
        if b:  # a preflight connect sends nothing: this is a client of the port (a health check)
            print("ignored", a[0], "(it sent data: not a preflight connect)", flush=True)
        else:
            seen.add(a[0]); print("accepted", a[0], flush=True)
' "$1" "$2" "$3"
  elif have perl; then
    perl -MIO::Socket::INET -MIO::Select -e '
my ($port, $need, $dl) = @ARGV; $| = 1;
sub ready { if (open(my $r, ">&=", 9)) { syswrite($r, "==== ready $port ====\n==== rc 0 ====\n") } }
my $s = IO::Socket::INET->new(LocalAddr => "0.0.0.0", LocalPort => $port, Listen => 256,
                              ReuseAddr => 1, Proto => "tcp") or do { ready(); print "busy $!\n"; exit 2 };
print "bound perl\n";
ready();
my %seen; my $end = time + $dl; my $sel = IO::Select->new($s);
while (keys(%seen) < $need && time < $end) {
  if ($sel->can_read(0.2)) { my $c = $s->accept or next; my $h = $c->peerhost; my $b = "";
    my $r = IO::Select->new($c); if ($r->can_read(1)) { sysread($c, $b, 1) } close $c;
    if (length $b) { print "ignored $h (it sent data: not a preflight connect)\n" }
    else { $seen{$h} = 1; print "accepted $h\n" } } }
' "$1" "$2" "$3"
  else echo "==== ready $1 ====
==== rc 0 ====" >&9; echo "no tool: neither python3 nor perl to open a test listener"; return 4; fi
}
hping() {  # device ip,ip,...: hccn_tool pings from one NPU, one after the other
  d=$1; old=$IFS; IFS=,; set -- $2; IFS=$old
  for a in "$@"; do run "hccn $d ping $a" lim 30 hccn_tool -i "$d" -ping -g address "$a"; done
}
"""

# How a node runs its cross ops (cross_args).  `background`: each op group a job of its own,
# beside the gather, every section into a file of a private temporary directory, printed at
# the end; a node that opens test listeners does so (they say `ready` at once, on fd 9) and so
# does one with hccn pings or without bash.  `foreground`, every other node: after the gather,
# the connects (one bash), then the pings, straight to the output: no temporary directory (3
# programs less to start on each of the nodes that only dial).
_CROSS_RUN = r"""
fg=1
for a do case $a in L|H) fg= ;; esac; done  # op codes: never an IP, port or deadline
have bash || fg=
mktmp() {
  exec 9>&1
  tmp=$(mktemp -d 2>/dev/null) || { tmp=/tmp/orch-preflight.$$; mkdir -m 700 "$tmp" || exit 1; }
  trap 'rm -rf "$tmp"' EXIT
  n=1000  # output files 1001, 1002, ...: `cat` prints them in the order the ops came
}
background() {
  peers= tcps=
  while [ $# -gt 0 ]; do
    case $1 in
      P) peers="$peers $2"; shift 2 ;;
      T) if have bash; then tcps="$tcps $2 $3 $4"; else job "tcp $2 $3" tcp_wait "$2" "$3" "$4"; fi
         shift 4 ;;
      L) job "listen $2" listen "$2" "$3" "$4"; shift 4 ;;
      H) raw hping "$2" "$3"; shift 3 ;;
      *) echo "cross: unknown op $1" >&2; exit 2 ;;
    esac
  done
  # shellcheck disable=SC2086  # IPs (validated by orch): one word each
  [ -n "$peers" ] && { n=$((n + 1)); pings $peers > "$tmp/$n" 2>&1 & }
  [ -n "$tcps" ] && { n=$((n + 1)); conns $tcps > "$tmp/$n" 2>&1 & }
}
foreground() {
  peers= tcps=
  while [ $# -gt 0 ]; do
    case $1 in
      P) peers="$peers $2"; shift 2 ;;
      T) tcps="$tcps $2 $3 $4"; shift 4 ;;
      *) echo "cross: unknown op $1" >&2; return 2 ;;
    esac
  done
  # shellcheck disable=SC2086
  [ -n "$tcps" ] && conns $tcps
  # shellcheck disable=SC2086
  [ -n "$peers" ] && pings $peers
  return 0
}
"""


def cross_script() -> str:
    """The round-2 script; args are ops built by `cross_args`."""
    return (f"# {CROSS_MARK}\n" + _COMMON + _CROSS_DEFS + _CROSS_RUN
            + 'if [ -n "$fg" ]; then foreground "$@"; exit 0; fi\n'
            + 'mktmp\nbackground "$@"\nwait\n[ "$n" -gt 1000 ] && cat "$tmp"/*\nexit 0\n')


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
