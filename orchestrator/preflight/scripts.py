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
            Ascend `hccn_tool -ping` from each NPU to the peers' NPUs (its shell functions
            and ops: cross.py)
    check   gather and cross in one exec, when the cross ops are known before the gather
    clean   remove /dev/shm/vllm-* and psm_* that no process holds (conservative)
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from ..netinfo import FACTS_SCRIPT
from ..stage.manifest import cache_key
from .cross import CROSS_DEFS, CROSS_MARK, CROSS_RUN

GATHER_MARK = "orch-preflight-gather"
CLEAN_MARK = "orch-preflight-clean"
RUNTIME_MARK = "orch-preflight-runtime"
SIZED_BY_MANIFEST = "sized by the manifest"  # the model section, when the manifest is gathered

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
            + CROSS_DEFS + CROSS_RUN + "gather() {\n" + runs + "}\n"
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


def cross_script() -> str:
    """The round-2 script; args are ops built by `cross.cross_args`."""
    return (f"# {CROSS_MARK}\n" + _COMMON + CROSS_DEFS + CROSS_RUN
            + 'if [ -n "$fg" ]; then foreground "$@"; exit 0; fi\n'
            + 'mktmp\nbackground "$@"\nwait\n[ "$n" -gt 1000 ] && cat "$tmp"/*\nexit 0\n')


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
