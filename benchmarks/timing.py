"""Side-by-side timing shared by the cost benchmarks (imported as a sibling script module)."""

from __future__ import annotations

import statistics
import time
from typing import Callable


def interleaved_medians(calls: dict[str, Callable[[], object]], reps: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds per call, the calls taking turns so that load on the machine hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(warmup):
        for f in calls.values():
            f()
    for _ in range(reps):
        for name, f in calls.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}
