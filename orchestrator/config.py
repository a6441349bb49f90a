"""Loading inventories, playbooks and profiles from YAML files.

The one place where YAML and pydantic errors become `InputError`s that name the file, the
field path and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from .errors import InventoryError, PlaybookError
from .inventory import Inventory
from .playbook import Playbook, Profile

M = TypeVar("M", bound=BaseModel)

REPO_PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks"


def _field_path(loc: tuple[object, ...], data: object) -> str:
    """Render a pydantic location like nodes.1.ip as `nodes[1] (name) .ip`."""
    out = ""
    cur = data
    for part in loc:
        if isinstance(part, int):
            label = ""
            if isinstance(cur, list) and part < len(cur) and isinstance(cur[part], dict):
                name = cur[part].get("name")
                label = f" ({name})" if isinstance(name, str) else ""
            out += f"[{part}]{label}"
            cur = cur[part] if isinstance(cur, list) and part < len(cur) else None
        else:
            out += f".{part}" if out else str(part)
            cur = cur.get(part) if isinstance(cur, dict) else None
    return out or "(top level)"


# libyaml's safe loader when PyYAML has it (the wheels do): the pure-Python one spends about
# 2 ms per node of a large inventory, every command
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: Path, err: type[InventoryError] | type[PlaybookError]) -> object:
    try:
        text = path.read_text()
    except OSError as exc:
        raise err(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        return yaml.load(text, Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        raise err(f"{path}: not valid YAML: {exc}") from exc


def validate(model: type[M], data: object, path: Path, err: type[InventoryError] | type[PlaybookError]) -> M:
    if not isinstance(data, dict):
        raise err(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: invalid {model.__name__.lower()}:"]
        for e in exc.errors():
            where = _field_path(tuple(e["loc"]), data)
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown field (check the spelling; see docs/inventory.md)"
            elif e["type"] == "missing":
                msg = "required field is missing"
            got = e.get("input")
            shown = "" if e["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  {where}: {msg}{shown}")
        raise err("\n".join(lines)) from exc


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    p = Path(path)
    return validate(Inventory, load_yaml(p, InventoryError), p, InventoryError)


def playbook_dirs(inventory_path: Path | None = None) -> list[Path]:
    dirs: list[Path] = []
    if inventory_path is not None:
        dirs.append(inventory_path.resolve().parent / "playbooks")
    extra = os.environ.get("ORCH_PLAYBOOK_PATH")
    if extra:
        dirs.extend(Path(d) for d in extra.split(os.pathsep) if d)
    dirs.append(REPO_PLAYBOOKS)
    return dirs


def find_playbook(name: str, inventory_path: Path | None = None) -> Path:
    if "/" in name or name.endswith((".yaml", ".yml")):
        p = Path(name)
        if not p.is_absolute() and inventory_path is not None:
            p = inventory_path.resolve().parent / p
        if p.is_file():
            return p
        raise PlaybookError(f"playbook file {p} does not exist")
    dirs = playbook_dirs(inventory_path)
    for d in dirs:
        found = [p for p in playbook_files(d) if p.stem == name]
        if found:
            return found[0]
    known = sorted({p.stem for d in dirs for p in playbook_files(d)})
    raise PlaybookError(
        f"playbook {name!r} not found in {', '.join(map(str, dirs))}; known: {', '.join(known)}"
    )


def playbook_files(d: Path) -> list[Path]:
    """The playbook files of a playbook folder: its *.yaml, then those of its subfolders
    (pd/, ...), hardware profiles (profiles/) and files starting with '_' left out."""
    if not d.is_dir():
        return []
    top = sorted(p for p in d.glob("*.yaml") if not p.name.startswith("_"))
    sub = sorted(p for p in d.glob("*/**/*.yaml")
                 if "profiles" not in p.relative_to(d).parts and not p.name.startswith("_"))
    return top + sub


def load_playbook(path: Path) -> Playbook:
    return validate(Playbook, load_yaml(path, PlaybookError), path, PlaybookError)


def load_profile(name: str, playbook_path: Path) -> Profile:
    candidates = [playbook_path.parent / "profiles" / f"{name}.yaml", REPO_PLAYBOOKS / "profiles" / f"{name}.yaml"]
    for p in candidates:
        if p.is_file():
            return validate(Profile, load_yaml(p, PlaybookError), p, PlaybookError)
    raise PlaybookError(f"{playbook_path}: profile {name!r} not found (looked in {candidates[0].parent})")


def list_playbooks() -> list[tuple[Path, Playbook]]:
    return [(p, load_playbook(p)) for d in playbook_dirs() for p in playbook_files(d)]
