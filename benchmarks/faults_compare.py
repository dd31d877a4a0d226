"""Fault benchmark comparison: a completed run's artefacts against the uninterrupted reference's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

ATOL = 1e-6  # weights / metrics tolerance when not bitwise equal


# --------------------------------------------------------------------------- comparison


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def _compare_tensor_files(reference: Path, candidate: Path, diffs: list[str]) -> bool:
    """Append differences beyond ``ATOL`` to ``diffs``; returns whether the files are bitwise equal."""
    if not candidate.is_file():
        diffs.append(f"{candidate.name} missing")
        return False
    ref, got = _load_tensors(reference), _load_tensors(candidate)
    if ref.keys() != got.keys():
        diffs.append(f"{candidate.name}: tensor names differ")
        return False
    bitwise = True
    for key in ref:
        if ref[key].shape != got[key].shape or ref[key].dtype != got[key].dtype:
            diffs.append(f"{candidate.name}:{key} shape/dtype differ")
            bitwise = False
            continue
        if not torch.equal(ref[key], got[key]):
            bitwise = False
            gap = (ref[key].double() - got[key].double()).abs().max().item()
            if gap > ATOL:
                diffs.append(f"{candidate.name}:{key} differs by {gap:.3g}")
    return bitwise


def _compare_numbers(reference: Any, candidate: Any, where: str, diffs: list[str]) -> None:
    if isinstance(reference, dict) and isinstance(candidate, dict):
        for key in sorted(set(reference) | set(candidate)):
            _compare_numbers(reference.get(key), candidate.get(key), f"{where}.{key}", diffs)
    elif isinstance(reference, list) and isinstance(candidate, list) and len(reference) == len(candidate):
        for index, (a, b) in enumerate(zip(reference, candidate)):
            _compare_numbers(a, b, f"{where}[{index}]", diffs)
    elif isinstance(reference, (int, float)) and isinstance(candidate, (int, float)):
        if abs(float(reference) - float(candidate)) > ATOL:
            diffs.append(f"{where}: {candidate} != {reference}")
    elif reference != candidate:
        diffs.append(f"{where}: {candidate!r:.60} != {reference!r:.60}")


_TIMING_KEYS = ("train_seconds", "seconds_per_epoch", "fit_seconds", "threads", "checkpoint")


def _numbers(path: Path) -> dict[str, Any]:
    payload = json.loads(path.read_text()) if path.is_file() else {}
    return {k: v for k, v in payload.items() if k not in _TIMING_KEYS}


def compare_artefacts(command: str, reference: Path, candidate: Path) -> dict[str, Any]:
    """``{"equal": within tolerance, "bitwise": every tensor file identical, "diffs": [...]}``."""
    diffs: list[str] = []
    if command == "student fit":
        bitwise = _compare_tensor_files(reference / "student" / "model.safetensors",
                                        candidate / "student" / "model.safetensors", diffs)
        _compare_numbers(_numbers(reference / "metrics.json"), _numbers(candidate / "metrics.json"), "metrics",
                         diffs)
    elif command == "teacher fit":
        bitwise = True
        for name in sorted(p.name for p in (reference / "adapter").glob("*.safetensors")):
            bitwise &= _compare_tensor_files(reference / "adapter" / name, candidate / "adapter" / name, diffs)
        _compare_numbers(_numbers(reference / "fit.json"), _numbers(candidate / "fit.json"), "fit", diffs)
    else:
        ref, got = (_cache_digests(d / "signals") for d in (reference, candidate))
        if ref != got:
            names = sorted(n for n in set(ref) | set(got) if ref.get(n) != got.get(n))
            diffs.append(f"cache files differ: {names[:5]}")
        bitwise = ref == got
    return {"equal": not diffs, "bitwise": bitwise and not diffs, "diffs": diffs[:10]}


def _cache_digests(signals: Path) -> dict[str, str]:
    """sha256 of every shard and of the item table, read from the files (and the manifest's own
    record, which must agree), plus whether the manifest says complete."""
    manifest = json.loads((signals / "manifest.json").read_text()) if (signals / "manifest.json").is_file() else {}
    out = {"complete": str(manifest.get("complete"))}
    for path in sorted(signals.glob("*.safetensors")):
        out[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    for entry in (manifest.get("splits") or {}).values():
        for name, rec in (entry.get("shards") or {}).items():
            out[f"manifest:{name}"] = rec.get("sha256")
    return out
