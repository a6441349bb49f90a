"""The shell scripts staging runs on the nodes (fixed text, values as positional arguments or
on stdin, never pasted into a script), and the parsers of what they print.  Pure.

    RSYNCD   on the source node: a temporary rsync daemon serving the model directory read
             only, to the targets' cluster IPs only, with a random password (stdin); it lives
             as long as orch keeps the SSH channel's input open
    PULL     on a target: hard-link the files the final directory already has right into the
             staging copy, then rsync the others from the source's daemon into it (resumable:
             partial files stay in the staging copy's .orch-partial)
    PRUNE    on a target: remove files of the staging copy the source does not have
    SWAP     on a target: the verified staging copy becomes the final directory
    SPACE    free bytes on the file system that will hold the final directory
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import PurePosixPath

RSYNC_PORT = 28730
LIST_END = "--orch-end-of-list--"

RSYNCD = r"""
set -u
MODEL=$1; PORT=$2; ADDR=$3; shift 3
command -v rsync >/dev/null 2>&1 || { echo "orch-rsyncd: error: rsync is not installed on this node"; exit 4; }
dir=$(mktemp -d) || exit 1
chmod 700 "$dir"
IFS= read -r pass || { echo "orch-rsyncd: error: no password on stdin"; exit 2; }
printf 'orch:%s\n' "$pass" > "$dir/secrets" && chmod 600 "$dir/secrets"
{
  echo "use chroot = no"
  echo "address = $ADDR"
  echo "port = $PORT"
  echo "pid file = $dir/pid"
  echo "log file = $dir/log"
  echo "[model]"
  echo "    path = $MODEL"
  echo "    read only = yes"
  echo "    list = no"
  echo "    auth users = orch"
  echo "    secrets file = $dir/secrets"
  echo "    hosts allow = $*"
  echo "    hosts deny = *"
} > "$dir/rsyncd.conf"
rsync --daemon --no-detach --config="$dir/rsyncd.conf" &
pid=$!
i=0
while [ $i -lt 50 ]; do
  if ! kill -0 $pid 2>/dev/null; then
    echo "orch-rsyncd: error: rsync --daemon exited: $(tail -3 "$dir/log" 2>/dev/null)"
    rm -rf "$dir"; exit 5
  fi
  [ -s "$dir/pid" ] && break
  sleep 0.1; i=$((i + 1))
done
echo "orch-rsyncd: listening on $ADDR:$PORT"
cat >/dev/null
kill $pid 2>/dev/null
wait $pid 2>/dev/null
rm -rf "$dir"
echo "orch-rsyncd: stopped"
"""

PULL = r"""
set -u
IP=$1; PORT=$2; FINAL=$3; STAGE=$4; BWLIMIT=$5
command -v rsync >/dev/null 2>&1 || { echo "orch-pull: error: rsync is not installed on this node"; exit 4; }
IFS= read -r RSYNC_PASSWORD || { echo "orch-pull: error: no password on stdin"; exit 2; }
export RSYNC_PASSWORD
lists=$(mktemp -d) || exit 1
trap 'rm -rf "$lists"' EXIT
: > "$lists/keep"
while IFS= read -r f; do [ "$f" = "--orch-end-of-list--" ] && break; printf '%s\n' "$f" >> "$lists/keep"; done
cat > "$lists/fetch"
mkdir -p "$STAGE" || { echo "orch-pull: error: cannot create $STAGE"; exit 5; }
# what the final directory already has right: hard links, no copy (and no space)
while IFS= read -r f; do
  d=$(dirname -- "$f"); mkdir -p "$STAGE/$d" && ln -f -- "$FINAL/$f" "$STAGE/$f" || {
    echo "orch-pull: error: cannot link $f into $STAGE"; exit 6; }
done < "$lists/keep"
echo "orch-pull: linked $(wc -l < "$lists/keep" | tr -d ' ')"
[ -s "$lists/fetch" ] || { echo "orch-pull: nothing to fetch"; exit 0; }
set -- -a -L --partial --partial-dir=.orch-partial --files-from="$lists/fetch" \
  --info=progress2 --no-inc-recursive --contimeout=15 --timeout=300
[ "$BWLIMIT" = 0 ] || set -- "$@" --bwlimit="$BWLIMIT"
rsync "$@" "rsync://orch@$IP:$PORT/model/" "$STAGE/"
rc=$?
echo "orch-pull: rsync exited $rc"
exit $rc
"""

PRUNE = r"""
STAGE=$1
while IFS= read -r f; do rm -f -- "$STAGE/$f" || exit 1; done
find "$STAGE" -mindepth 1 -type d -empty -delete 2>/dev/null
echo "orch-prune: done"
"""

SWAP = r"""
set -eu
FINAL=$1; STAGE=$2
rm -rf "$STAGE/.orch-partial"
old="$FINAL.orch-old.$$"
if [ -e "$FINAL" ]; then mv -- "$FINAL" "$old"; fi
mv -- "$STAGE" "$FINAL"
if [ -e "$old" ]; then rm -rf -- "$old"; fi
echo "orch-swap: done"
"""

SPACE = r"""
p=$1
while [ ! -d "$p" ]; do p=$(dirname -- "$p"); done
df -Pk -- "$p" | awk 'NR == 2 { printf "orch-space: %.0f %s\n", $4 * 1024, $6 }'
"""


def staging_path(final: str) -> str:
    """The staging copy: beside the final directory (same file system: the swap is a rename)."""
    p = PurePosixPath(final)
    return str(p.parent / f".{p.name}.orch-staging")


def sh(script: str, *args: str) -> list[str]:
    return ["sh", "-c", script, "sh", *args]


def rsyncd_argv(model: str, port: int, addr: str, allow: list[str]) -> list[str]:
    ips = [str(ipaddress.ip_address(a)) for a in [addr, *allow]]
    return sh(RSYNCD, model, str(int(port)), ips[0], *ips[1:])


def pull_argv(src_ip: str, port: int, final: str, bwlimit_kb: int = 0) -> list[str]:
    return sh(PULL, str(ipaddress.ip_address(src_ip)), str(int(port)), final, staging_path(final),
              str(int(bwlimit_kb)))


def pull_input(password: str, keep: list[str], fetch: list[str]) -> bytes:
    return ("\n".join([password, *keep, LIST_END, *fetch]) + "\n").encode()


_PROGRESS = re.compile(r"^\s*([\d,]+)\s+(\d+)%")


def parse_progress(chunk: str) -> int | None:
    """Bytes transferred so far, from rsync --info=progress2's last update in `chunk`."""
    last = None
    for part in re.split(r"[\r\n]", chunk):
        m = _PROGRESS.match(part)
        if m:
            last = int(m.group(1).replace(",", ""))
    return last


def parse_space(text: str) -> int | None:
    m = re.search(r"^orch-space: (\d+)", text, re.M)
    return int(m.group(1)) if m else None
