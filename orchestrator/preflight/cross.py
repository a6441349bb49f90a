"""The cross round's shell text and its ops: what each node runs to probe its peers (pings,
TCP connects to the head's ports, short test listeners there, hccn_tool pings between NPUs),
in the same exec as the gather (scripts.check_script) or in a round trip of its own
(scripts.cross_script).  Fixed text: the ops' values (validated IPs, ports, deadlines) only
arrive as positional arguments, built by `cross_args`.  Which peers a node probes: peers.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

CROSS_MARK = "orch-preflight-cross"

# Seconds: how long peers retry a TCP connect to the head, how long the head listens.  The
# head's listener and its peers' connects start in execs of their own, on all nodes at once:
# under load (64 nodes on 2 cores) one can start seconds after the other.  Both end as soon as
# every expected peer connected, so a long deadline costs time only when a link is broken.
CONNECT_DEADLINE = 12
LISTEN_DEADLINE = 20

# The cross round's shell functions (they use scripts._COMMON's have/lim/run/held)
CROSS_DEFS = r"""
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
CROSS_RUN = r"""
fg=1
for a do case $a in L|H) fg= ;; esac; done  # op codes: never an IP, port or deadline
have bash || fg=
mktmp() {
  exec 9>&1
  tmp=$(mktemp -d 2>/dev/null) || { tmp=/tmp/orch-preflight.$$; mkdir -m 700 "$tmp" || exit 1; }
  trap 'rm -rf "$tmp"' EXIT
  n=1000  # output files 1001, 1002, ...: `cat` prints them in the order the ops came
}
ops() {  # the ops into $peers and $tcps; listeners, hccn pings and (without bash) connects
  # start as jobs at once (never on a node that runs them in the foreground: fg is unset there)
  peers= tcps=
  while [ $# -gt 0 ]; do
    case $1 in
      P) peers="$peers $2"; shift 2 ;;
      T) if have bash; then tcps="$tcps $2 $3 $4"; else job "tcp $2 $3" tcp_wait "$2" "$3" "$4"; fi
         shift 4 ;;
      L) job "listen $2" listen "$2" "$3" "$4"; shift 4 ;;
      H) raw hping "$2" "$3"; shift 3 ;;
      *) echo "cross: unknown op $1" >&2; return 2 ;;
    esac
  done
}
background() {
  ops "$@" || exit 2
  # shellcheck disable=SC2086  # IPs (validated by orch): one word each
  [ -n "$peers" ] && { n=$((n + 1)); pings $peers > "$tmp/$n" 2>&1 & }
  [ -n "$tcps" ] && { n=$((n + 1)); conns $tcps > "$tmp/$n" 2>&1 & }
}
foreground() {
  ops "$@" || return 2
  # shellcheck disable=SC2086
  [ -n "$tcps" ] && conns $tcps
  # shellcheck disable=SC2086
  [ -n "$peers" ] && pings $peers
  return 0
}
"""


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
