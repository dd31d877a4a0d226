"""Latency of one model on one input: warm-up, pinned threads, minimum iterations and duration.

``profile_latency`` times single calls (one clock read before and after each, nothing else
inside the timed region) until both ``min_iters`` calls and ``min_seconds`` of timed calls
are reached, and reports p50/p90/p95/p99 (numpy's linear interpolation), mean, std, min, max,
throughput and peak RSS -- never the mean alone. It is a hand-written loop rather than
``torch.utils.benchmark`` because one timer must serve PyTorch and ONNX Runtime alike and
percentiles need every call's time (``Timer.blocked_autorange`` averages blocks of calls);
the clock is injectable so tests check the statistics on known timings.

Targets: a ``torch.nn.Module`` or any callable (run as ``fn(*inputs)`` under
``torch.inference_mode`` with ``torch.set_num_threads(threads)``, restored afterwards), an
``onnxruntime.InferenceSession`` (run as ``session.run(None, inputs)``; its intra-op threads
are fixed when it is created) or the path of an ONNX file (a session is made with ``threads``).
torch is imported only when a torch target is profiled.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def latency_stats(seconds: Sequence[float]) -> dict[str, float]:
    """Milliseconds: p50/p90/p95/p99 (linear interpolation), mean, std (population), min, max."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if ms.size == 0:
        raise ValueError("no timings")
    stats = {f"p{q}": float(np.percentile(ms, q)) for q in PERCENTILES}
    stats.update(mean=float(ms.mean()), std=float(ms.std()), min=float(ms.min()), max=float(ms.max()))
    return stats


def _is_session(target: Any) -> bool:
    return type(target).__name__ == "InferenceSession" and hasattr(target, "run")


def _batch_size(inputs: Any) -> int:
    first = next(iter(inputs.values())) if isinstance(inputs, Mapping) else inputs[0]
    return int(first.shape[0])


@contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def profile_latency(
    target: Any,
    inputs: Sequence[Any] | Mapping[str, Any],
    *,
    threads: int | None = 1,
    warmup: int = 10,
    min_iters: int = 50,
    min_seconds: float = 1.0,
    max_iters: int = 1_000_000,
    clock: Callable[[], float] = time.perf_counter,
    label: str | None = None,
) -> dict[str, Any]:
    """Time ``target`` on ``inputs`` (see module docstring); returns a JSON-ready record."""
    if min_iters < 1 or warmup < 0:
        raise ValueError("min_iters must be >= 1 and warmup >= 0")
    if isinstance(target, (str, Path)):
        from recdistill.export.runtime import make_session

        target = make_session(target, threads=threads or 1)
    if _is_session(target):
        runtime = "onnxruntime"
        session_threads = target.get_session_options().intra_op_num_threads
        if threads is not None and session_threads and session_threads != threads:
            raise ValueError(f"the session runs {session_threads} intra-op threads, not {threads}: "
                             "create it with make_session(path, threads=...)")
        threads = session_threads or threads
        feed = dict(inputs)

        def run() -> Any:
            return target.run(None, feed)

        context = _nothing()
    elif callable(target):
        runtime = "torch" if "torch" in sys.modules and _is_torch(target, inputs) else "python"
        args = tuple(inputs.values()) if isinstance(inputs, Mapping) else tuple(inputs)

        def run() -> Any:
            return target(*args)

        threads = threads or 1
        context = _torch_threads(threads) if runtime == "torch" else _nothing()
    else:
        raise TypeError(f"cannot profile a {type(target).__name__}: pass a module, callable, session or ONNX path")

    times: list[float] = []
    with context:
        for _ in range(warmup):
            run()
        first = None
        while True:
            start = clock()
            run()
            end = clock()
            first = start if first is None else first
            times.append(end - start)
            if len(times) >= max_iters or (len(times) >= min_iters and end - first >= min_seconds):
                break
    batch = _batch_size(inputs)
    timed = float(sum(times))
    return {
        "label": label,
        "runtime": runtime,
        "threads": threads,
        "batch_size": batch,
        "warmup": warmup,
        "iterations": len(times),
        "min_iters": min_iters,
        "min_seconds": min_seconds,
        "timed_seconds": timed,
        "latency_ms": latency_stats(times),
        "throughput_per_s": batch * len(times) / timed if timed > 0 else float("inf"),
        "peak_rss_mb": _peak_rss_mb(),
    }


def _is_torch(target: Any, inputs: Any) -> bool:
    import torch

    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    return isinstance(target, torch.nn.Module) or any(isinstance(v, torch.Tensor) for v in values)


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
