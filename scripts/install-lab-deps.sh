#!/usr/bin/env bash
# Install the system packages the orch lab needs (Debian 12, as root). Idempotent and quiet:
# packages already present are skipped, apt output goes to a log, progress goes to stdout.
set -euo pipefail

# iputils-ping: the lab hosts share this machine's /usr, and a server has ping; without it
# orch check's net.ping falls back to a TCP connect to each peer's sshd (a fork there per probe)
# tini: the init of each podman lab host's PID namespace (reaps what daemonizes there)
PKGS=(openssh-server podman runc docker.io debootstrap iproute2 iptables uidmap util-linux
      ca-certificates curl rsync iputils-ping tini)
LOG="${ORCH_LAB_APT_LOG:-/tmp/orch-lab-apt.log}"
start=$SECONDS
say() { printf '[install-lab-deps %3ds] %s\n' "$((SECONDS - start))" "$*"; }

if [[ $EUID -ne 0 ]]; then
  echo "install-lab-deps.sh: must run as root (it installs packages with apt-get)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  say "all ${#PKGS[@]} packages already installed"
else
  say "missing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  say "apt-get update (log: $LOG)"
  apt-get update -qq >"$LOG" 2>&1 || { tail -20 "$LOG" >&2; exit 1; }
  say "apt-get install ${#missing[@]} packages"
  apt-get install -y -qq --no-install-recommends \
      -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
      "${missing[@]}" >>"$LOG" 2>&1 || { tail -30 "$LOG" >&2; exit 1; }
  say "installed"
fi

# The distribution's sshd service would listen on 0.0.0.0:22 of the root namespace; the lab
# starts its own sshd per host and does not need it. Leave the service as the admin set it.
mkdir -p /run/sshd
for b in sshd podman runc dockerd debootstrap nsenter iptables ip rsync ping tini; do
  command -v "$b" >/dev/null || [[ -x /usr/sbin/$b ]] || { echo "missing after install: $b" >&2; exit 1; }
done
say "done: $(podman --version 2>/dev/null), $(dockerd --version 2>/dev/null | cut -d, -f1)"
