"""The `orch` command line (first cut: plan)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from . import config
from .errors import OrchError
from .plan import build_plan

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def _root() -> None:
    """orch: deploy vLLM across several machines over SSH and keep it running."""


@app.command()
def plan(inventory: Path, json_out: bool = typer.Option(False, "--json")) -> None:
    inv = config.load_inventory(inventory)
    pb_path = config.find_playbook(inv.playbook, inventory)
    pb = config.load_playbook(pb_path)
    prof = config.load_profile(pb.profile, pb_path)
    p = build_plan(inv, pb, prof)
    if json_out:
        print(json.dumps(p.to_json(), indent=2))
    else:
        print(p)


def main() -> None:
    try:
        app()
    except OrchError as exc:
        print(f"orch: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
