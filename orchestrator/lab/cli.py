"""`orch lab up|down|status` (mounted by the main CLI; also `python -m orchestrator.lab.cli`)."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from . import Lab, LabError
from .fakes import parse_fault

lab_app = typer.Typer(help="A real multi-host cluster on this machine (namespaces + sshd + "
                           "containers) for demos and integration tests. Root only.",
                      no_args_is_help=True)
console = Console(stderr=True)


def _fail(e: Exception) -> None:
    console.print(f"[red]orch lab: {e}[/red]")
    raise typer.Exit(1)


@lab_app.command()
def up(
    hosts: Annotated[int, typer.Option("--hosts", "-n", help="number of hosts")] = 3,
    runtime: Annotated[str, typer.Option(help="podman or docker")] = "podman",
    fault: Annotated[list[str] | None, typer.Option(
        help="fake NPU fault, HOST:KEY=VALUE, e.g. h1:link_down=3 (repeatable)")] = None,
    replace: Annotated[bool, typer.Option(help="replace a lab up with other parameters")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Create the lab (idempotent: reuses a healthy lab and all caches)."""
    try:
        faults: dict[str, dict[str, Any]] = {}
        for spec in fault or []:
            name, f = parse_fault(spec)
            faults.setdefault(name, {}).update(f)
        lab = Lab().up(hosts=hosts, runtime=runtime, faults=faults, replace=replace,
                       quiet=quiet)
    except (LabError, ValueError) as e:
        _fail(e)
        return
    _print_status(lab.status())
    console.print(f"inventory: {lab.inventory_path}\n"
                  f"ssh: ssh -i {lab.ssh_key} -o UserKnownHostsFile={lab.known_hosts} "
                  f"-o StrictHostKeyChecking=yes root@{lab.hosts[0].ip}")


@lab_app.command()
def down(quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False) -> None:
    """Remove everything the lab created (keeps image, venv and model caches)."""
    try:
        problems = Lab().down(quiet=quiet)
    except LabError as e:
        _fail(e)
        return
    if problems:
        raise typer.Exit(1)


@lab_app.command()
def status(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show what the lab has now (exit 1 if it is not up and healthy)."""
    st = Lab().status()
    if as_json:
        print(json.dumps(st, indent=2))
    else:
        _print_status(st)
    if not st.get("healthy"):
        raise typer.Exit(1)


def _print_status(st: dict[str, Any]) -> None:
    if not st.get("hosts") and not st.get("up"):
        console.print("no lab (run `orch lab up`)")
        return
    t = Table(title=f"orch lab: {st.get('status')} on {st.get('runtime')}, "
                    f"bridge {'ok' if st.get('bridge') else 'MISSING'}, "
                    f"FORWARD rule {'ok' if st.get('forward_rule') else 'MISSING'}")
    docker = st.get("runtime") == "docker"
    podman = st.get("runtime") == "podman"
    for c in ["host", "ip", "nic", "netns", "mnt ns", "sshd pid", "ssh :22",
              *(["pause"] if docker else []), *(["podman api", "image"] if podman else []),
              "npu fault"]:
        t.add_column(c)
    for h in st["hosts"]:
        t.add_row(h["name"], h["ip"], _ok(h["nic"], h["nic_ok"]), _ok(h["netns"], h["netns_ok"]),
                  _ok("ok", h.get("mntns_ok"), "missing"),
                  _ok(str(h["sshd_pid"]), h["sshd"]), _ok("ok", h["ssh_port"], "refused"),
                  *([_ok("running", h.get("pause"), "gone")] if docker else []),
                  *([_ok(str(h.get("podman_service_pid")), h.get("podman_api"), "no answer"),
                     "hidden" if h.get("image_hidden") else "shared"] if podman else []),
                  ",".join(f"{k}={v}" for k, v in (h.get("fault") or {}).items()) or "-")
    console.print(t)


def _ok(text: str, ok: object, bad: str | None = None) -> str:
    return f"[green]{text}[/green]" if ok else f"[red]{bad or text + ' (missing)'}[/red]"


if __name__ == "__main__":
    lab_app()
