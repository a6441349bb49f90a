"""`orch smoke`: the seeds' functional verification through the deployed API - a text
completion, a chat completion and, for vision-language models, a chat with an image sent as a
data URL (made here, no internet)."""

from __future__ import annotations

import base64
import struct
import time
import zlib
from dataclasses import dataclass

from .probe import Api, ProbeError


@dataclass
class SmokeResult:
    check: str
    ok: bool
    seconds: float
    answer: str
    error: str = ""


def png_data_url(width: int = 64, height: int = 32) -> str:
    """A small PNG (red left half, blue right half) as a data URL, written without Pillow."""
    rows = b""
    for _ in range(height):
        row = b"\x00" + b"".join(
            (b"\xff\x20\x20" if x < width // 2 else b"\x20\x40\xff") for x in range(width))
        rows += row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


def is_vision_language(model: str, served: str) -> bool:
    name = f"{model} {served}".lower()
    return "-vl" in name or "vl-" in name or "vision" in name


async def run_smoke(api: Api, served: str, model: str, vision: bool | None = None,
                    max_tokens: int = 32) -> list[SmokeResult]:
    checks: list[tuple[str, tuple[str, object]]] = [
        ("completion", ("complete", "The capital of France is")),
        ("chat", ("chat", [{"type": "text", "text": "Say hello in five words."}])),
    ]
    if vision if vision is not None else is_vision_language(model, served):
        checks.append(("chat+image", ("chat", [
            {"type": "image_url", "image_url": {"url": png_data_url()}},
            {"type": "text", "text": "What colours are in this image?"}])))
    out = []
    for name, (kind, arg) in checks:
        t0 = time.monotonic()
        try:
            if kind == "complete":
                ans = await api.complete(served, prompt=str(arg), max_tokens=max_tokens)
            else:
                ans = await api.chat(served, arg, max_tokens=max_tokens)
            out.append(SmokeResult(name, True, time.monotonic() - t0, ans))
        except ProbeError as exc:
            out.append(SmokeResult(name, False, time.monotonic() - t0, "", exc.reason))
    return out
