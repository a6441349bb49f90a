"""A client loop for the lab: a few threads sending real completions to one URL (a fleet's
router) one after the other, recording each request's start, latency and outcome, so that
tests and benchmarks can count the failures and the latency a redeploy costs the clients."""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field

import httpx


@dataclass(frozen=True)
class Sample:
    start: float  # time.monotonic() when sent
    seconds: float
    ok: bool
    detail: str  # the status code, or the error's type


@dataclass
class ClientLoop:
    url: str  # the API base, e.g. http://10.77.0.13:8080
    model: str = "tiny"
    threads: int = 2
    timeout: float = 60.0
    prompt: str = "The capital of France is"
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout, trust_env=False) as c:
            while not self._stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post(f"{self.url}/v1/completions",
                               json={"model": self.model, "prompt": self.prompt, "max_tokens": 4,
                                     "temperature": 0})
                    ok, detail = r.status_code == 200, str(r.status_code)
                except httpx.HTTPError as exc:
                    ok, detail = False, type(exc).__name__
                with self._lock:
                    self.samples.append(Sample(t0, time.monotonic() - t0, ok, detail))
                if not ok:
                    time.sleep(0.1)

    def __enter__(self) -> ClientLoop:
        for _ in range(self.threads):
            t = threading.Thread(target=self._run, daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(self.timeout + 5)

    def between(self, t0: float, t1: float = float("inf")) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if t0 <= s.start < t1]

    @staticmethod
    def summary(samples: list[Sample]) -> dict[str, float | int]:
        lat = sorted(s.seconds for s in samples)
        p99 = lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else 0.0
        return {"requests": len(samples), "failed": sum(not s.ok for s in samples),
                "p50_s": round(statistics.median(lat), 3) if lat else 0.0, "p99_s": round(p99, 3),
                "max_s": round(lat[-1], 3) if lat else 0.0}
