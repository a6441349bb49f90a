"""Table 4: Ansible side by side with orch on the same lab hosts.

ansible-core is NOT a project dependency: this script installs it into its own venv
(ANSIBLE_VENV, default /tmp/orch-bench-ansible) when missing, and says so.

  preflight  benchmarks/ansible/preflight.yml (ssh/ping, runtime info, ip -j addr, image
             inspect, port free)  vs  `orch check INV`, and `orch check` without its
             cross-node round (--skip-checks net.ping, ports.reachable)
  launch     benchmarks/ansible/launch.yml (podman run -d IMAGE sleep 300, then rm -f, on
             every host)  vs  benchmarks/orch_launch.py (cluster.open_session +
             Session.each + Host.run, the same argv)

Ansible: default forks (5) and forks = number of hosts; Ansible's default ssh settings
(ControlMaster/ControlPersist, no pipelining), each run with a fresh ControlPath directory
(cold connections, like orch's), masters closed after the run.

    python benchmarks/ansible_compare.py [--hosts 4,16,64] [--reps 5] [--big-reps 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common as C  # noqa: E402

HERE = Path(__file__).resolve().parent
VENV = Path(os.environ.get("ANSIBLE_VENV", "/tmp/orch-bench-ansible"))
PLAYBOOK = VENV / "bin" / "ansible-playbook"
CROSS_CHECKS = ("net.ping", "ports.reachable")  # orch check's second (cross-node) round


def ensure_ansible() -> str:
    if not PLAYBOOK.exists():
        C.say(f"ansible-core is not installed: installing it into {VENV} (a separate venv for "
              "this benchmark only; not a dependency of orch)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "ansible-core"], check=True)
    out = subprocess.run([str(PLAYBOOK), "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0].strip()


def ansible_inventory(lab, n: int) -> Path:  # type: ignore[no-untyped-def]
    common = (f"-o UserKnownHostsFile={lab.known_hosts} -o StrictHostKeyChecking=yes "
              "-o BatchMode=yes")
    lines = ["[lab]"]
    for h in lab.hosts[:n]:
        lines.append(f"{h.name} ansible_host={h.ip}")
    lines += ["", "[lab:vars]", "ansible_user=root",
              f"ansible_ssh_private_key_file={lab.ssh_key}",
              f"ansible_ssh_common_args='{common}'",
              "ansible_python_interpreter=/usr/bin/python3", ""]
    p = C.WORK / "ansible" / f"hosts-{n}.ini"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines))
    return p


def run_ansible(playbook: str, inv: Path, forks: int) -> C.Run:
    cp_dir = Path(tempfile.mkdtemp(prefix="cp-", dir=C.WORK / "ansible"))
    env = {**os.environ, "ANSIBLE_CONFIG": str(HERE / "ansible" / "ansible.cfg"),
           "ANSIBLE_SSH_CONTROL_PATH_DIR": str(cp_dir),
           "ANSIBLE_LOCAL_TEMP": str(C.WORK / "ansible" / "tmp"),
           "ANSIBLE_NOCOLOR": "1"}
    try:
        r = C.timed([str(PLAYBOOK), "-i", str(inv), "-f", str(forks),
                     str(HERE / "ansible" / playbook)], env=env, timeout=1800)
    finally:
        for sock in cp_dir.iterdir():  # close the ControlPersist masters this run left
            subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                           capture_output=True, timeout=10)
        shutil.rmtree(cp_dir, ignore_errors=True)
    if r.rc != 0:
        raise SystemExit(f"ansible-playbook {playbook} -f {forks} on {inv}: rc {r.rc}\n"
                         f"{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
    return r


def cleanup_launch(lab) -> None:  # type: ignore[no-untyped-def]
    ids = C.podman(lab, "ps", "-aq", "--filter", "label=orch.bench=launch").stdout.split()
    if ids:
        C.podman(lab, "rm", "-f", "-t", "0", *ids)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hosts", default="4,16,64")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--big-reps", type=int, default=3, help="repetitions at 64 hosts and more")
    ap.add_argument("--shell", default="norc", choices=C.SHELL_MODES,
                    help="login-shell mode of the lab hosts (common.set_shell)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--keep-lab", action="store_true")
    a = ap.parse_args()
    sizes = [int(x) for x in a.hosts.split(",")]
    cmd = C.this_command()
    version = ensure_ansible()
    lab = C.lab_up(max(sizes))
    env = C.orch_env()
    orch_check = "orch check INV"
    ainv = {n: ansible_inventory(lab, n) for n in sizes}
    oinv = {n: C.inventory(lab, n, f"bench-ansible-{n}") for n in sizes}

    def orch_check_run(n: int, local_only: bool = False) -> C.Run:
        argv = C.orch_argv("check", str(oinv[n]))
        if local_only:  # no cross-node round: what the Ansible play does
            argv += [a for c in CROSS_CHECKS for a in ("--skip-checks", c)]
        return C.timed(argv, env=env)

    def orch_launch_run(n: int) -> C.Run:
        r = C.timed([C.PY, str(HERE / "orch_launch.py"), str(oinv[n])], env=env)
        if r.rc != 0:
            raise SystemExit(f"orch_launch on {n}: {r.stdout[-1500:]} {r.stderr[-1500:]}")
        return r

    C.set_shell(lab, a.shell)
    kinds = ["ans5", "ansN", "orch", "orch1"]
    res = {step: {n: {k: [] for k in kinds} for n in sizes} for step in ("preflight", "launch")}
    cleanup_launch(lab)
    for n in sizes:  # warm-up (page cache, podman storage, Python bytecode)
        run_ansible("preflight.yml", ainv[n], n)
        orch_check_run(n)
    for rep in range(max(a.reps, a.big_reps)):
        for n in sizes:
            if rep >= (a.big_reps if n >= 64 else a.reps):
                continue
            C.say(f"ansible vs orch, repetition {rep + 1}, {n} hosts")
            p = res["preflight"][n]
            p["ans5"].append(run_ansible("preflight.yml", ainv[n], 5))
            p["ansN"].append(run_ansible("preflight.yml", ainv[n], n))
            p["orch"].append(orch_check_run(n))
            p["orch1"].append(orch_check_run(n, local_only=True))
            q = res["launch"][n]
            q["ans5"].append(run_ansible("launch.yml", ainv[n], 5))
            cleanup_launch(lab)
            q["ansN"].append(run_ansible("launch.yml", ainv[n], n))
            cleanup_launch(lab)
            q["orch"].append(orch_launch_run(n))
            cleanup_launch(lab)
            C.pyenv_stale_lock()
            C.say("  " + ", ".join(f"{s} {k} {res[s][n][k][-1].wall:.1f}s"
                                   for s in res for k in kinds if res[s][n][k]))
    C.set_shell(lab, "as-is")
    C.pyenv_stale_lock()
    C.dump("ansible", {s: {n: {k: [vars(x) | {"stdout": x.stdout[-1500:], "stderr": x.stderr[-500:]}
                                   for x in v] for k, v in d.items()} for n, d in r.items()}
                       for s, r in res.items()})

    def cell(xs: list[C.Run]) -> str:
        return f"{C.med([x.wall for x in xs]):.2f} [{C.med([x.cpu for x in xs]):.2f}]"

    md = C.header("Ansible vs orch on the same lab hosts", cmd)
    md += (f"- {version} in {VENV} (not an orch dependency); default ssh settings "
           "(ControlPersist, no pipelining), interpreter given (no discovery), fresh ControlPath "
           "per run (cold connections, like orch)\n"
           f"- preflight: `ansible-playbook -f F benchmarks/ansible/preflight.yml` vs "
           f"`{orch_check}`; launch: `ansible-playbook -f F benchmarks/ansible/launch.yml` vs "
           "`python benchmarks/orch_launch.py INV` (same podman argv, lab image, `sleep 300`)\n"
           f"- lab hosts' login shell mode: **{a.shell}** (see the first table)\n"
           f"- medians of {a.reps} runs ({a.big_reps} at 64 hosts), sizes interleaved; cells: "
           "wall s [client CPU s: user+sys of the command and its children]\n"
           "- orch's check does more than the Ansible play (one gather script with ~13 probes "
           "per node, then a cross-node round of pings and port connects)\n\n")
    for step in ("preflight", "launch"):
        rows = []
        one = step == "preflight"
        for n in sizes:
            d = res[step][n]
            o = C.med([x.wall for x in d["orch"]])
            a5, aN = C.med([x.wall for x in d["ans5"]]), C.med([x.wall for x in d["ansN"]])
            row = [n, cell(d["ans5"]), cell(d["ansN"]), cell(d["orch"])]
            if one:
                row.append(cell(d["orch1"]))
            row += [f"{a5 / o:.1f}", f"{aN / o:.1f}"]
            if one:
                o1 = C.med([x.wall for x in d["orch1"]])
                row += [f"{a5 / o1:.1f}", f"{aN / o1:.1f}"]
            rows.append(row)
        hdr = ["hosts", "Ansible forks=5", "Ansible forks=hosts", "orch"]
        if one:
            hdr.append("orch, local checks only")
        hdr += ["Ansible f=5 / orch", "Ansible f=hosts / orch"]
        if one:
            hdr += ["f=5 / orch local", "f=hosts / orch local"]
        md += f"**{step}**\n\n" + C.table(hdr, rows) + "\n\n"
    md += ("`orch, local checks only` = `orch check INV --skip-checks net.ping "
           "--skip-checks ports.reachable`: no cross-node round, the closest to the "
           "Ansible play.\n\n")
    C.publish("ansible", md, write=not a.no_write)
    if not a.keep_lab:
        C.lab_down()


if __name__ == "__main__":
    main()
