"""Secret values: read on the machine orch runs on, handed to containers on stdin
(`--env-file /dev/stdin`), and masked in everything orch prints or saves."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InventoryError
from .inventory import Inventory, SecretRef

MASK = "***"
API_KEY_ENV = "VLLM_API_KEY"
_registered: set[str] = set()


@dataclass(frozen=True)
class Secrets:
    values: dict[str, str] = field(default_factory=dict)  # container env name -> value

    @property
    def api_key(self) -> str | None:
        return self.values.get(API_KEY_ENV)

    def env_file(self) -> str:
        return "".join(f"{k}={v}\n" for k, v in self.values.items())

    def digest(self) -> str:
        """Changes when a value changes (so a rotated token redeploys); reveals nothing."""
        h = hashlib.sha256()
        for k in sorted(self.values):
            h.update(f"{k}\0{self.values[k]}\0".encode())
        return h.hexdigest()[:16]


def _read(name: str, ref: SecretRef, where: str) -> str:
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None:
            raise InventoryError(f"{where}: {name} comes from ${ref.env}, which is not set")
    else:
        path = os.path.expanduser(ref.file or "")
        try:
            value = Path(path).read_text().strip()
        except OSError as exc:
            raise InventoryError(f"{where}: {name} comes from {ref.file}: {exc.strerror}") from exc
    if not value or "\n" in value or "\r" in value:
        raise InventoryError(f"{where}: {name} ({ref.describe()}) is empty or spans several lines")
    return value


def resolve(inv: Inventory, where: str = "inventory") -> Secrets:
    refs = dict(inv.secrets)
    if inv.api_key is not None:
        refs[API_KEY_ENV] = inv.api_key
    values = {name: _read(name, ref, f"{where}: secrets.{name}" if name != API_KEY_ENV else f"{where}: api_key")
              for name, ref in refs.items()}
    register(values.values())
    return Secrets(values)


def register(values: object) -> None:
    for v in values:  # type: ignore[attr-defined]
        if isinstance(v, str) and len(v) >= 4:
            _registered.add(v)


def mask(text: str) -> str:
    if not _registered or not text:
        return text
    pattern = "|".join(re.escape(v) for v in sorted(_registered, key=len, reverse=True))
    return re.sub(pattern, MASK, text)


def mask_event(_logger: object, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: mask secret values in every string of a log event."""
    return {k: mask(v) if isinstance(v, str) else v for k, v in event.items()}
