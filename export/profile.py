"""Latency of one model on one input: warm-up, pinned threads, minimum iterations and duration.

``profile_latency`` times single calls (one clock read before and after each, nothing else
inside the timed region) until both ``min_iters`` calls and ``min_seconds`` of timed calls
are reached, and reports p50/p90/p95/p99 (numpy's linear interpolation), mean, std, min, max,
throughput and peak RSS -- never the mean alone. It is a hand-written loop rather than
``torch.utils.benchmark`` because one timer must serve PyTorch and ONNX Runtime alike and
percentiles need every call's time (``Timer.blocked_autorange`` averages blocks of calls);
the clock is injectable so tests check the statistics on known timings.
``profile_interleaved`` times several targets in alternating blocks of calls (PyTorch and ONNX
Runtime see the same load on a shared machine, so their p50 ratio is fair).

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
from contextlib import ExitStack, contextmanager
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


def _prepare(target: Any, inputs: Sequence[Any] | Mapping[str, Any],
             threads: int | None) -> tuple[Callable[[], Any], str, int | None, Any]:
    """``(run, runtime, threads, context)`` for one target (see module docstring)."""
    if isinstance(target, (str, Path)):
        from recdistill.export.runtime import make_session

        target = make_session(target, threads=threads or 1)
    if _is_session(target):
        session_threads = target.get_session_options().intra_op_num_threads
        if threads is not None and session_threads != threads:  # 0: not pinned, ONNX Runtime uses every core
            running = f"{session_threads}" if session_threads else "0 (unpinned: every core)"
            raise ValueError(f"the session runs {running} intra-op threads, not {threads}: "
                             "create it with make_session(path, threads=...)")
        feed = dict(inputs)
        return (lambda: target.run(None, feed)), "onnxruntime", session_threads or threads, _nothing()
    if callable(target):
        runtime = "torch" if "torch" in sys.modules and _is_torch(target, inputs) else "python"
        args = tuple(inputs.values()) if isinstance(inputs, Mapping) else tuple(inputs)
        threads = threads or 1
        return (lambda: target(*args)), runtime, threads, _torch_threads(threads) if runtime == "torch" else _nothing()
    raise TypeError(f"cannot profile a {type(target).__name__}: pass a module, callable, session or ONNX path")


def _record(label: str | None, runtime: str, threads: int | None, inputs: Any, times: list[float], warmup: int,
            min_iters: int, min_seconds: float) -> dict[str, Any]:
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
    run, runtime, threads, context = _prepare(target, inputs, threads)
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
    return _record(label, runtime, threads, inputs, times, warmup, min_iters, min_seconds)


def profile_interleaved(
    targets: Sequence[tuple[str, Any, Sequence[Any] | Mapping[str, Any]]],
    *,
    threads: int | None = 1,
    warmup: int = 10,
    min_iters: int = 50,
    min_seconds: float = 1.0,
    block: int = 25,
    clock: Callable[[], float] = time.perf_counter,
) -> list[dict[str, Any]]:
    """Time several ``(label, target, inputs)`` in alternating blocks of ``block`` calls, so that
    every target sees the same machine load (a ratio of two p50s is then fair on a shared
    machine); stops once each has ``min_iters`` calls and ``min_seconds`` per target have passed.
    One record per target, as ``profile_latency``'s."""
    if min_iters < 1 or warmup < 0 or block < 1:
        raise ValueError("min_iters and block must be >= 1 and warmup >= 0")
    prepared = [(label, inputs, *_prepare(target, inputs, threads)) for label, target, inputs in targets]
    times: list[list[float]] = [[] for _ in prepared]
    with ExitStack() as stack:
        for *_, context in prepared:
            stack.enter_context(context)
        for _, _, run, *_ in prepared:
            for _ in range(warmup):
                run()
        begin = clock()
        while not (all(len(t) >= min_iters for t in times) and clock() - begin >= min_seconds * len(prepared)):
            for (_, _, run, *_), t in zip(prepared, times):
                for _ in range(block):
                    start = clock()
                    run()
                    t.append(clock() - start)
    return [_record(label, runtime, n, inputs, t, warmup, min_iters, min_seconds)
            for (label, inputs, _, runtime, n, _), t in zip(prepared, times)]


def _is_torch(target: Any, inputs: Any) -> bool:
    import torch

    values = inputs.values() if isinstance(inputs, Mapping) else inputs
    return isinstance(target, torch.nn.Module) or any(isinstance(v, torch.Tensor) for v in values)


def _peak_rss_mb() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024
