"""The manifest of a model directory: every file's size and BLAKE2b hash, computed on the
node (coreutils `b2sum`, present wherever coreutils is; about 1.2 GB/s per core here, files
hashed in parallel on every core) and cached per node, so a repeated look rehashes only
files whose size, mtime or inode changed (the same quick check rsync makes).  Pure: the node
script as text, the parser, comparisons.

    MANIFEST_SCRIPT MODEL CACHE_DIR [OTHER_DIR ...]
        prints  orch-manifest v1 <files> <bytes>
                <path>\\t<size>\\t<b2sum>       one line per file, sorted by path
        reads the cache files of MODEL and of the OTHER_DIRs (a staging copy reuses the
        hashes of the files it shares with the final directory), writes MODEL's
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from ..errors import StageError

CACHE_DIR = "/var/cache/orch/manifests"
MARK = "orch-manifest"
PARTIAL_DIR = ".orch-partial"  # rsync's --partial-dir inside a staging copy: never listed

MANIFEST_SCRIPT = r"""
set -u
MODEL=$1; CDIR=$2; shift 2; MARK=orch-manifest
command -v b2sum >/dev/null 2>&1 || { echo "orch-manifest: error: b2sum (coreutils) is missing"; exit 4; }
[ -d "$MODEL" ] || { echo "orch-manifest: missing"; exit 3; }
key() {  # the first 32 hex digits of the BLAKE2b of the directory's real path; MKEY, where
  # the caller set it, is that of MODEL as given (cache_key): taken when that is the real path
  p=$(cd "$1" 2>/dev/null && pwd -P)
  case ${MKEY:-} in
    *[!0-9a-f]*|"") ;;
    *) if [ "$1" = "$MODEL" ] && [ "$p" = "$MODEL" ] && [ ${#MKEY} -eq 32 ]; then printf %s "$MKEY"; return; fi ;;
  esac
  k=$(printf %s "$p" | b2sum); k=${k%%" "*}
  r=${k#????????????????????????????????}; printf %s "${k%"$r"}"
}
[ -d "$CDIR" ] || { mkdir -p "$CDIR" && chmod 700 "$CDIR"; }
cache="$CDIR/$(key "$MODEL").tsv"
list() { find -L . -type f ! -path './.orch-partial/*' -printf '%P\t%s\t%T@\t%D:%i\n'; }
# fast path, the usual case of a look: the cache knows every file (inode, size, mtime), so the
# manifest is printed from it (3 programs run instead of 25); anything else takes the long way
if [ $# -eq 0 ] && [ -f "$cache" ] && files=$(cd "$MODEL" && list) && [ -n "$files" ]; then
  printf '%s\n' "$files" | awk -F '\t' -v OFS='\t' -v mark="$MARK" '
    FILENAME == ARGV[1] { h[$1 FS $2 FS $3] = $4; next }
    NF != 4 || $1 ~ /\\/ || !(($4 FS $2 FS $3) in h) { miss = 1; exit }
    { n++; s += $2; row[n] = $1 OFS $2 OFS h[$4 FS $2 FS $3] }
    END { if (miss) exit 1; printf "%s v1 %d %d 0\n", mark, n, s; for (i = 1; i <= n; i++) print row[i] }
  ' "$cache" - && exit 0
fi
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
: > "$tmp/known"
for d in "$MODEL" "$@"; do f="$CDIR/$(key "$d").tsv"; [ -f "$f" ] && cat "$f" >> "$tmp/known"; done
cd "$MODEL" || exit 3
list > "$tmp/files" || {
  echo "orch-manifest: error: cannot list $MODEL"; exit 5; }
LC_ALL=C sort -o "$tmp/files" "$tmp/files"
awk -F '\t' 'NF != 4 || $1 ~ /\\/ { bad = 1 } END { exit bad }' "$tmp/files" || {
  echo "orch-manifest: error: a file name holds a tab, a newline or a backslash"; exit 6; }
# files whose (inode, size, mtime) the cache knows keep their hash; the others are hashed
awk -F '\t' -v OFS='\t' 'FILENAME == ARGV[1] { h[$1 FS $2 FS $3] = $4; next }
  { k = $4 FS $2 FS $3; if (k in h) print $1, h[k] > "'"$tmp/hit"'"; else print $1 > "'"$tmp/todo"'" }' \
  "$tmp/known" "$tmp/files"
touch "$tmp/hit" "$tmp/todo"
n=$(nproc 2>/dev/null || echo 1)
tr '\n' '\0' < "$tmp/todo" | xargs -0 -r -n 8 -P "$n" b2sum -- > "$tmp/sums" || {
  echo "orch-manifest: error: b2sum failed"; exit 7; }
awk '{ print substr($0, length($1) + 3) "\t" $1 }' "$tmp/sums" > "$tmp/new"
cat "$tmp/hit" "$tmp/new" | LC_ALL=C sort > "$tmp/hashes"
# the cache: inode, size, mtime -> hash; the manifest: path, size, hash
awk -F '\t' -v OFS='\t' 'FILENAME == ARGV[1] { h[$1] = $2; next } ($1 in h) { print $4, $2, $3, h[$1] }' \
  "$tmp/hashes" "$tmp/files" > "$tmp/cache" && mv "$tmp/cache" "$cache.$$" && mv "$cache.$$" "$cache"
total=$(awk -F '\t' '{ s += $2 } END { printf "%d", s }' "$tmp/files")
echo "orch-manifest v1 $(wc -l < "$tmp/files" | tr -d ' ') $total $(wc -l < "$tmp/todo" | tr -d ' ')"
awk -F '\t' -v OFS='\t' 'FILENAME == ARGV[1] { h[$1] = $2; next } { print $1, $2, h[$1] }' "$tmp/hashes" "$tmp/files"
"""


def cache_key(path: str) -> str:
    """The name of a directory's cache file as the script's key() makes it from its real path:
    the first 32 hex digits of the path's BLAKE2b (b2sum's)."""
    return hashlib.blake2b(path.encode()).hexdigest()[:32]


def manifest_argv(model: str, others: list[str] | None = None, cache_dir: str = CACHE_DIR) -> list[str]:
    return ["sh", "-c", MANIFEST_SCRIPT, "sh", model, cache_dir, *(others or [])]


@dataclass(frozen=True)
class Manifest:
    files: dict[str, tuple[int, str]] = field(default_factory=dict)  # path -> (size, b2sum)
    hashed: int = 0  # files hashed this time (the others came from the cache)

    @property
    def bytes(self) -> int:
        return sum(s for s, _ in self.files.values())

    @property
    def digest(self) -> str:
        """One value for the whole directory (what the spec hash folds in, when asked to)."""
        h = hashlib.sha256()
        for path in sorted(self.files):
            size, b2 = self.files[path]
            h.update(f"{path}\0{size}\0{b2}\n".encode())
        return h.hexdigest()[:16]

    def differs(self, ref: Manifest) -> list[str]:
        """Paths that are missing, different or extra here compared with `ref`, sorted."""
        paths = set(self.files) | set(ref.files)
        return sorted(p for p in paths if self.files.get(p) != ref.files.get(p))

    def to_fetch(self, ref: Manifest) -> list[str]:
        """Paths `ref` has that are missing or different here (what a copy must transfer)."""
        return sorted(p for p, v in ref.files.items() if self.files.get(p) != v)


def parse_manifest(node: str, text: str) -> Manifest | None:
    """The script's output; None when the directory does not exist."""
    lines = text.splitlines()
    head = next((i for i, ln in enumerate(lines) if ln.startswith(MARK)), None)
    if head is None:
        raise StageError(f"{node}: no manifest ({(lines or ['no output'])[-1][:200]})")
    first = lines[head]
    if first == f"{MARK}: missing":
        return None
    if ": error:" in first:
        raise StageError(f"{node}: {first.split(': error: ', 1)[1]}")
    parts = first.split()
    if len(parts) != 5 or parts[1] != "v1":
        raise StageError(f"{node}: unknown manifest header {first!r}")
    count, hashed = int(parts[2]), int(parts[4])
    files: dict[str, tuple[int, str]] = {}
    for ln in lines[head + 1:]:
        if not ln:  # a section of the preflight's gather ends with a newline of its own
            continue
        path, size, b2 = ln.split("\t")
        files[path] = (int(size), b2)
    if len(files) != count:
        raise StageError(f"{node}: manifest lists {len(files)} files, its header {count} (cut off?)")
    return Manifest(files, hashed)


def majority(manifests: dict[str, Manifest]) -> Manifest | None:
    """The manifest most nodes have; None on a tie."""
    by: dict[str, list[str]] = {}
    for node, m in manifests.items():
        by.setdefault(m.digest, []).append(node)
    ranked = sorted(by.values(), key=len, reverse=True)
    if not ranked or (len(ranked) > 1 and len(ranked[0]) == len(ranked[1])):
        return None
    return manifests[ranked[0][0]]
