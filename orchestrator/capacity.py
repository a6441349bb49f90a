"""Capacity check at plan time: do the model's weights (and the KV cache of one full-length
sequence per data parallel rank) fit in the accelerator memory the plan uses?

Pure.  A rough, conservative-in-one-direction estimate - it catches recipes that cannot
load, it does not promise that a recipe which passes reaches its throughput:

    need = weights_gb x (1 if expert parallel else DP size)       weights (EP shards experts
                                                                   over every rank; without EP
                                                                   every DP replica holds a copy)
         + DP size x kv_bytes_per_token x max_model_len / 1e9      one full sequence per rank
    have = sum over the nodes of (devices the node's ranks use) x device_memory_gb

Refused (TopologyError) when need > have; a warning when need > 80 % of have (little room
for the KV cache and activations: lower --max-model-len or use more devices).  Skipped when
the playbook gives no `model_memory` or the profile no `device_memory_gb`.

The seeds' statements are the test cases (tests/unit/test_playbooks_capacity.py): e.g.
Qwen3-VL-235B-A22B BF16 at 256k context needs 1 A3 (64G x 16) or 2 A2 (64G x 8); 1 A2 is
refused; Qwen3-235B-A22B BF16 at 32k fits 2 A2 with 32G NPUs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import TopologyError
from .flags import canonical
from .playbook import FlagValue, Playbook, Profile

TIGHT = 0.8


@dataclass(frozen=True)
class Capacity:
    need_gb: float
    have_gb: float
    weights_gb: float
    kv_gb: float
    max_model_len: int | None
    devices: int

    @property
    def ratio(self) -> float:
        return self.need_gb / self.have_gb if self.have_gb else float("inf")

    def describe(self) -> str:
        kv = (f" + KV cache for {self.max_model_len} tokens per DP rank {self.kv_gb:.0f} GB"
              if self.kv_gb else "")
        return (f"weights {self.weights_gb:.0f} GB{kv} = {self.need_gb:.0f} GB on "
                f"{self.devices} devices with {self.have_gb:.0f} GB ({self.ratio:.0%})")


def max_model_len(flags: Mapping[str, FlagValue], native: int | None) -> int | None:
    found = native
    for flag, value in flags.items():  # the last spelling wins, as in vLLM's parser
        if canonical(flag) == "--max-model-len" and value not in (None, True, False):
            found = int(str(value))
    return found


def estimate(
    pb: Playbook, prof: Profile, flags: Mapping[str, FlagValue], used_devices: list[int], dp: int
) -> Capacity | None:
    """`used_devices`: devices the ranks of each node use (TP x local DP)."""
    mm = pb.model_memory
    if mm is None or prof.device_memory_gb is None:
        return None
    mml = max_model_len(flags, mm.native_max_model_len)
    kv = dp * mm.kv_bytes_per_token * mml / 1e9 if (mm.kv_bytes_per_token and mml) else 0.0
    weights = mm.weights_gb * (1 if pb.parallel.expert else dp)
    devices = sum(used_devices)
    return Capacity(weights + kv, devices * prof.device_memory_gb, weights, kv, mml, devices)


def check_capacity(
    pb: Playbook, prof: Profile, flags: Mapping[str, FlagValue], used_devices: list[int], dp: int
) -> list[str]:
    """Raise TopologyError when the model does not fit; return warnings when it is tight."""
    cap = estimate(pb, prof, flags, used_devices, dp)
    if cap is None:
        return []
    where = f"playbook {pb.name!r} on {prof.name} ({prof.device_memory_gb:g} GB per device)"
    if cap.need_gb > cap.have_gb:
        raise TopologyError(
            f"{where}: the model does not fit: {cap.describe()}; use more devices or nodes, "
            "a quantized checkpoint, or a lower --max-model-len"
        )
    if cap.ratio > TIGHT:
        return [f"{where}: memory is tight: {cap.describe()}; little room is left for the KV "
                "cache and activations (lower --max-model-len or --max-num-seqs if it OOMs)"]
    return []
