"""The light reader: partial coverage (validity mask), exact-row reads, in-memory mode, require,
speed at MovieLens-100K scale, format-version refusal and the import-weight guard."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from recdistill.teacher.cache_format import (
    FORMAT_VERSION, SCORING, CacheVersionError, MissingSignalError, atomic_save_safetensors, atomic_write_json,
    shard_name,
)
from recdistill.teacher.cache_reader import TeacherSignals

STRIDE = 1 << 20


def _synthetic_cache(folder, *, num_users=60, max_pos=40, every=2, k=5, d=6, shard_size=64, layers=(1,),
                     num_items=50, seed=0):
    """A format-2 cache written by hand (no teacher): user-major rows at positions 1, 1+every, ..."""
    rng = np.random.default_rng(seed)
    ids = np.array([u * STRIDE + p for u in range(num_users) for p in range(1, max_pos, every)], dtype=np.int64)
    n = len(ids)
    data = {
        "example_id": torch.from_numpy(ids),
        "target": torch.from_numpy(rng.integers(1, num_items + 1, n).astype(np.int32)),
        "hidden": torch.from_numpy(rng.standard_normal((n, d)).astype(np.float16)),
        "topk_items": torch.from_numpy(rng.integers(1, num_items + 1, (n, k)).astype(np.int32)),
        "topk_scores": torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32)),
        "score_user": torch.from_numpy(rng.standard_normal((n, d + 1)).astype(np.float32)),
    }
    if layers:
        data["layers"] = torch.from_numpy(rng.standard_normal((n, len(layers), d)).astype(np.float16))
    folder.mkdir(parents=True, exist_ok=True)
    shards = {}
    for s, start in enumerate(range(0, n, shard_size)):
        name = shard_name("train", s)
        part = {key: v[start:start + shard_size] for key, v in data.items()}
        shards[name] = {"sha256": atomic_save_safetensors(folder / name, part), "rows": len(part["target"]),
                        "split": "train", "index": s}
    score_items = torch.from_numpy(rng.standard_normal((num_items + 1, d + 1)).astype(np.float32))
    atomic_save_safetensors(folder / "item_embeddings.safetensors",
                            {"item_embeddings": torch.randn(num_items + 1, d), "score_items": score_items,
                             "logit_scale": torch.ones(1)})
    signals = sorted(data)
    atomic_write_json(folder / "manifest.json", {
        "format_version": FORMAT_VERSION, "complete": True, "k": k, "layers": list(layers), "signals": signals,
        "scoring": SCORING, "shard_size": shard_size,
        "dataset": {"name": "synthetic", "fingerprint": "f", "num_users": num_users, "num_items": num_items,
                    "item_space_sha256": "x"},
        "splits": {"train": {"num_examples": n, "num_shards": len(shards), "shards": shards}},
        "item_embeddings": {"file": "item_embeddings.safetensors", "sha256": "-", "shape": [num_items + 1, d]},
    })
    return folder, data, score_items


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return _synthetic_cache(tmp_path_factory.mktemp("c") / "signals")


def test_reader_and_format_import_no_lightning_transformers_or_peft():
    code = ("import recdistill.teacher.cache_reader, recdistill.teacher.cache_format, sys; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'lightning', 'transformers', 'peft', 'pytorch_lightning'}); assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("mode", [True, False, "auto-small", "auto-large"])
def test_lookup_any_shape_with_validity_mask(cache, mode):
    folder, data, _ = cache
    in_memory = "auto" if str(mode).startswith("auto") else mode
    budget = 1 if mode == "auto-small" else None
    reader = TeacherSignals(folder, in_memory=in_memory, memory_budget=budget)
    ids = data["example_id"].numpy()
    rng = np.random.default_rng(1)
    q = rng.choice(ids, 24, replace=False)
    q[[3, 10]] = 0  # padding
    q[[5, 17]] = [7 * STRIDE + 2, 999 * STRIDE + 1]  # an uncovered position, an unknown user
    q = torch.from_numpy(q).reshape(2, 3, 4)
    keys = ("target", "hidden", "layers", "topk_items", "topk_scores", "score_user")
    got, valid = reader.lookup(q, keys)
    assert valid.shape == (2, 3, 4) and valid.dtype == torch.bool and int((~valid).sum()) == 4
    row_of = {int(e): i for i, e in enumerate(ids)}
    for key in keys:
        assert got[key].shape == (2, 3, 4, *data[key].shape[1:]) and got[key].dtype == data[key].dtype
        flat, fv = got[key].reshape(24, *data[key].shape[1:]), valid.reshape(-1)
        for j, e in enumerate(q.reshape(-1).tolist()):
            if fv[j]:
                assert torch.equal(flat[j], data[key][row_of[e]])
            else:
                assert not flat[j].any()
    binary = TeacherSignals(folder, in_memory=in_memory, memory_budget=budget)
    binary._dense = None  # the binary-search path agrees with the O(1) map
    again, valid2 = binary.lookup(q, keys)
    assert torch.equal(valid2, valid) and all(torch.equal(again[key], got[key]) for key in keys)
    want_resident = {True: list(sorted(keys)), False: [], "auto-small": [], "auto-large": list(sorted(keys))}[mode]
    assert reader.resident_keys == want_resident
    # get keeps raising on unknown ids; lookup never does
    with pytest.raises(KeyError, match="not in signals cache"):
        reader.get(q, keys=("target",))
    assert reader.coverage(q) == pytest.approx(20 / 22)  # padding ids are not counted
    assert reader.coverage(torch.zeros(3, dtype=torch.long)) == 1.0


def test_memory_mapped_reads_fetch_exactly_the_rows_asked_for(cache):
    folder, data, _ = cache
    reader = TeacherSignals(folder, in_memory=False)
    seen: list[np.ndarray] = []

    class Recorder:
        def __init__(self, arr):
            self.arr, self.shape, self.dtype = arr, arr.shape, arr.dtype

        def __getitem__(self, idx):
            seen.append(np.array(idx))
            return self.arr[idx]

    for name in reader._shard_files:  # wrap the memory maps of every shard
        arrays = reader._shard_arrays(name)
        arrays["topk_items"] = Recorder(arrays["topk_items"])
    ids = data["example_id"].numpy()
    pick = np.array([ids[3], ids[60], ids[3], ids[10], ids[63]])  # shard 0: rows 3, 10, 60, 63 (shard size 64)
    got, valid = reader.lookup(pick, ("topk_items",))
    assert valid.all() and torch.equal(got["topk_items"], data["topk_items"][[3, 60, 3, 10, 63]])
    assert len(seen) == 1 and seen[0].tolist() == [3, 10, 60, 63]  # never the span 3..63


def test_require_names_the_missing_signal_and_the_emit_setting(tmp_path):
    folder, _, _ = _synthetic_cache(tmp_path / "s", layers=())
    reader = TeacherSignals(folder)
    reader.require(("topk_items", "score_user", "teacher_logits", "item_embeddings"))
    with pytest.raises(MissingSignalError, match=r"signal 'layers' was not emitted into .*--emit.layers") as info:
        reader.require(("layers",))
    assert "\n" not in str(info.value)
    with pytest.raises(MissingSignalError, match=r"--emit.layers '\[2\]'"):
        reader.require(layers=[2])
    with pytest.raises(MissingSignalError, match="--emit.k 9"):
        reader.require(k=9)
    with pytest.raises(KeyError, match="unknown signal"):
        reader.require(("logits",))
    with pytest.raises(MissingSignalError, match="layers"):
        reader.lookup([1], ("layers",))
    with pytest.raises(MissingSignalError, match="layers"):
        TeacherSignals(folder, keys=("layers",))


def test_teacher_logits_is_the_dot_product(cache):
    folder, data, score_items = cache
    reader = TeacherSignals(folder)
    ids = data["example_id"][:5]
    logits, valid = reader.teacher_logits(torch.cat([ids, torch.tensor([0])]))
    want = data["score_user"][:5] @ score_items.t()
    assert valid.tolist() == [True] * 5 + [False]
    assert torch.allclose(logits[:5, 1:], want[:, 1:]) and torch.isinf(logits[:, 0]).all()
    assert not logits[5, 1:].any()


def test_reader_pickles_without_copying_the_maps(cache):
    folder, data, _ = cache
    reader = TeacherSignals(folder, in_memory=False)
    reader.lookup(data["example_id"][:3], ("hidden",))
    again = pickle.loads(pickle.dumps(reader))
    assert again._arrays == {} or set(again._arrays) <= {"item_embeddings.safetensors"}
    a, _ = again.lookup(data["example_id"][:3], ("hidden",))
    assert torch.equal(a["hidden"], data["hidden"][:3])


def test_an_older_format_version_is_refused_naming_the_rebuild_command(tmp_path):
    folder, _, _ = _synthetic_cache(tmp_path / "s")
    man = json.loads((folder / "manifest.json").read_text())
    man["format_version"] = 1
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CacheVersionError, match=r"format version 1.*recdistill teacher emit --emit.overwrite"):
        TeacherSignals(folder)
    man["format_version"] = FORMAT_VERSION + 1
    (folder / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(CacheVersionError, match="newer"):
        TeacherSignals(folder)


def test_lookup_speed_at_movielens_100k_scale(tmp_path):
    """~100k examples (MovieLens-100K, every position), K = 50: a 256 x 50 batch costs ~ms."""
    folder, data, _ = _synthetic_cache(tmp_path / "s", num_users=943, max_pos=107, every=1, k=50, d=64,
                                       shard_size=4096, layers=(), num_items=1682)
    ids = data["example_id"].numpy()
    rng = np.random.default_rng(0)
    keys = ("topk_items", "topk_scores")

    def timed(reader, repeats=5):
        reader.lookup(ids[:10], keys)  # loads the tables (in-memory mode)
        best = float("inf")
        for _ in range(repeats):
            q = torch.from_numpy(rng.choice(ids, (256, 50)))
            start = time.perf_counter()
            got, valid = reader.lookup(q, keys)
            best = min(best, time.perf_counter() - start)
            assert valid.all() and got["topk_items"].shape == (256, 50, 50)
        return best

    in_memory = timed(TeacherSignals(folder, in_memory=True))
    mapped = timed(TeacherSignals(folder, in_memory=False), repeats=2)
    print(f"lookup 256x50, K=50: in memory {in_memory * 1e3:.1f} ms, memory-mapped {mapped * 1e3:.1f} ms")
    assert in_memory < 0.05  # measured ~3 ms on a shared 2-core machine
