"""Teacher-signal emission with 2 CPU processes (Lightning ``strategy="ddp"``, gloo) equals a
single-process emission tensor for tensor; a 2-process run stopped half-way and resumed too.

Lightning's "ddp" launcher starts the other ranks by re-executing ``sys.argv``, which cannot work
from inside pytest, so the 2-process emission runs as a small script in a subprocess (this is
also exactly how a user runs it: ``recdistill teacher emit`` / a script with ``devices=N``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from recdistill.data import SequentialDataModule
from recdistill.teacher.cache_reader import SIGNAL_KEYS, TeacherSignals
from recdistill.teacher.hllm import HLLMTeacher
from recdistill.teacher.signals import emit_signals
from recdistill.teacher.testing import make_tiny_llama, planted_split

warnings.filterwarnings("ignore", ".*does not have many workers.*")

SPLIT_ARGS = dict(num_users=40, num_items=30, mean_length=14, seed=1)
MAX_LEN = 10
# 5 train shards + 1 valid + 1 test: both ranks get several shards, and batches of 6 windows
# straddle shard boundaries (computed by both owners)
SETTINGS = dict(k=7, layers=[1, 2], shard_size=100, batch_size=6, item_chunk_size=8)
PARTIAL = 3  # shards written by the interrupted run (rank 0 gets two, rank 1 one)

SCRIPT = """
import json, sys, traceback
import torch
import torch.distributed as dist
from pathlib import Path
from recdistill.data import SequentialDataModule
from recdistill.teacher.signals import CacheMismatchError, emit_signals
from recdistill.teacher.testing import planted_split

cfg = json.loads(Path(sys.argv[1]).read_text())
split = planted_split(**cfg["split"])
dm = SequentialDataModule.from_split(split, max_len=cfg["max_len"])
trainer_kwargs = dict(accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False)


def emit(out, **extra):
    return emit_signals(cfg["ckpt"], dm, out, **dict(cfg["settings"], trainer_kwargs=trainer_kwargs, **extra))


root = Path(cfg["root"])
emit(root / "ddp")  # 1) a full 2-process emission
rank, world = dist.get_rank(), dist.get_world_size()  # the process group outlives trainer.predict
result = {"rank": rank, "world": world}
# 2) stopped after PARTIAL shards, then resumed, in the same processes (a second Trainer reuses
#    the launched ranks and the process group)
out = root / "resumed"
emit(out, max_new_shards=cfg["partial"])
result["partial_manifest"] = json.loads((out / "manifest.json").read_text())
result["partial_progress"] = sorted(p.name for p in out.glob("progress-rank*.json"))
result["partial_mtimes"] = {p.name: p.stat().st_mtime_ns for p in out.glob("*-0*.safetensors")}
dist.barrier()
emit(out)
result["final_mtimes"] = {p.name: p.stat().st_mtime_ns for p in out.glob("*-0*.safetensors")}
# 3) a mismatching run is refused on every rank (the error is broadcast, nobody hangs)
try:
    emit(root / "ddp", k=cfg["settings"]["k"] - 2)
    result["mismatch"] = None
except CacheMismatchError as exc:
    result["mismatch"] = str(exc)
(root / f"result-rank{rank}.json").write_text(json.dumps(result))
dist.barrier()
dist.destroy_process_group()  # gloo's threads left running at exit can abort a rank after its work
"""


@pytest.fixture(scope="module")
def split():
    return planted_split(**SPLIT_ARGS)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, split):
    root = tmp_path_factory.mktemp("teacher")
    tiny = make_tiny_llama(root / "tiny", texts=split.item_text, num_layers=2)
    torch.manual_seed(0)
    t = HLLMTeacher(num_items=split.num_items, item_text=split.item_text, base_model=str(tiny), num_layers=2,
                    embedding_cache_dir=str(root / "emb"), progress=False)
    with torch.no_grad():  # a non-trivial adapter
        for name, p in t.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    t.dataset_fingerprint = split.fingerprint
    return t.save_pretrained(root / "ckpt")


def _assert_same_cache(got_dir, ref_dir, split):
    got, ref = TeacherSignals(got_dir, split=split, verify=True), TeacherSignals(ref_dir, split=split, verify=True)
    for which in ("train", "valid", "test"):
        assert np.array_equal(got.example_ids(which), split.example_ids(which))
    ids = np.concatenate([split.example_ids(s) for s in ("train", "valid", "test")])
    assert len(got) == len(ref) == len(ids)
    a, b = got.get(ids, keys=SIGNAL_KEYS), ref.get(ids, keys=SIGNAL_KEYS)
    for key in SIGNAL_KEYS:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert torch.equal(got.item_embeddings(), ref.item_embeddings())
    assert got.logit_scale() == ref.logit_scale()
    m_got = json.loads((got_dir / "manifest.json").read_text())
    m_ref = json.loads((ref_dir / "manifest.json").read_text())
    assert m_got["complete"] is True
    assert m_got == m_ref  # same header, same shards, same sha256 (the bytes are identical)
    assert not list(got_dir.glob("progress-*")) and not list(got_dir.glob(".*tmp*"))


@pytest.mark.slow
def test_two_process_emission_equals_single_process(tmp_path, checkpoint, split):
    # the reference: one process
    dm = SequentialDataModule.from_split(split, max_len=MAX_LEN)
    ref = emit_signals(str(checkpoint), dm, tmp_path / "ref", trainer_kwargs={"enable_progress_bar": False},
                       **SETTINGS)
    n_shards = sum(e["num_shards"] for e in json.loads((ref / "manifest.json").read_text())["splits"].values())
    assert n_shards == 7

    # two processes
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"ckpt": str(checkpoint), "root": str(tmp_path), "split": SPLIT_ARGS,
                               "max_len": MAX_LEN, "settings": SETTINGS, "partial": PARTIAL}))
    script = tmp_path / "emit_ddp.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {k: v for k, v in os.environ.items()
           if k not in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, str(script), str(cfg)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    results = [json.loads((tmp_path / f"result-rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"]) for r in results] == [(0, 2), (1, 2)]

    # 1) the full 2-process emission
    _assert_same_cache(tmp_path / "ddp", ref, split)

    # 2) stopped after PARTIAL shards: both ranks wrote some, the manifest is incomplete
    partial = results[0]["partial_manifest"]
    assert partial["complete"] is False
    assert sorted(partial["splits"]) == ["test", "train", "valid"]  # every split is planned
    assert sorted(partial["splits"]["train"]["shards"]) == [f"train-{i:05d}.safetensors" for i in range(PARTIAL)]
    assert not partial["splits"]["valid"]["shards"] and not partial["splits"]["test"]["shards"]
    assert results[0]["partial_progress"] == ["progress-rank0.json", "progress-rank1.json"]
    assert sorted(results[0]["partial_mtimes"]) == sorted(partial["splits"]["train"]["shards"])
    # ... then resumed: the finished shards were kept, the rest written, equal to one process
    final = results[0]["final_mtimes"]
    assert len(final) == n_shards
    assert all(final[name] == t for name, t in results[0]["partial_mtimes"].items())
    _assert_same_cache(tmp_path / "resumed", ref, split)

    # 3) a mismatching run is refused on both ranks, naming the field
    for r in results:
        assert r["mismatch"] is not None and "k (cache: 7, now: 5)" in r["mismatch"], r["mismatch"]
    _assert_same_cache(tmp_path / "ddp", ref, split)  # untouched
