"""Teacher signals: chunked top-K vs brute force, manifest checks, resume, reader."""

from __future__ import annotations

import json
import math
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from recdistill.data import EXAMPLE_STRIDE, SequentialDataModule
from recdistill.teacher.cache_reader import TeacherSignals
from recdistill.teacher.hllm import HLLMTeacher
from recdistill.teacher.signals import CacheMismatchError, chunked_topk, emit_signals, plan_split
from recdistill.teacher.testing import make_tiny_llama, planted_split

warnings.filterwarnings("ignore", ".*does not have many workers.*")

QUIET = {"enable_progress_bar": False}
SETTINGS = dict(k=7, layers=[1, 2], shard_size=150, batch_size=6, item_chunk_size=8, trainer_kwargs=QUIET)


@pytest.fixture(scope="module")
def split():
    return planted_split(num_users=50, num_items=30, mean_length=14, seed=1)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, split):
    tiny = make_tiny_llama(tmp_path_factory.mktemp("tiny"), texts=split.item_text, num_layers=2)
    torch.manual_seed(0)
    t = HLLMTeacher(num_items=split.num_items, item_text=split.item_text, base_model=str(tiny), num_layers=2,
                    embedding_cache_dir=str(tmp_path_factory.mktemp("emb")), progress=False)
    with torch.no_grad():  # a non-trivial adapter
        for name, p in t.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    return t.eval()


@pytest.fixture(scope="module")
def dm(split):
    return SequentialDataModule.from_split(split, max_len=10, batch_size=16, eval_batch_size=32)


@pytest.fixture(scope="module")
def full_cache(tmp_path_factory, teacher, dm):
    return emit_signals(teacher, dm, tmp_path_factory.mktemp("full") / "signals", **SETTINGS)


def _brute_force(teacher, split, example_ids, max_len, k):
    """Sort the full score matrix, history masked and target excluded, per example."""
    items, scores = [], []
    for eid in example_ids:
        u, p = divmod(int(eid), EXAMPLE_STRIDE)
        seq = split.sequences[u]
        ctx = torch.tensor(seq[max(0, p - max_len):p]).unsqueeze(0)
        with torch.no_grad():
            s = teacher(ctx)[0].clone()
        s[torch.tensor(seq[:p])] = -math.inf
        s[int(seq[p])] = -math.inf
        s[0] = -math.inf
        top = torch.sort(s, descending=True, stable=True)
        items.append(top.indices[:k])
        scores.append(top.values[:k])
    return torch.stack(items), torch.stack(scores)


def test_chunked_topk_matches_full_sort():
    torch.manual_seed(0)
    full = torch.randn(9, 101)
    history = torch.randint(0, 101, (9, 12))
    target = torch.randint(1, 101, (9,))
    for exclude in (True, False):
        ids, vals = chunked_topk(lambda a, b: full[:, a:b], 100, 13, history=history, target=target,
                                 exclude_target=exclude, chunk_size=17)
        ref = full.clone()
        keep = ref.gather(1, target[:, None])
        ref.scatter_(1, history, -math.inf)
        if exclude:
            ref.scatter_(1, target[:, None], -math.inf)
        else:
            ref.scatter_(1, target[:, None], keep)
        ref[:, 0] = -math.inf
        top = torch.topk(ref, 13, dim=1)
        assert torch.equal(ids, top.indices) and torch.equal(vals, top.values)


def test_emitted_topk_equals_brute_force(full_cache, teacher, split):
    reader = TeacherSignals(full_cache, split=split)
    assert reader.k == 7 and reader.layers == [1, 2]
    for which in ("valid", "test", "train"):
        ids = split.example_ids(which)
        assert np.array_equal(reader.example_ids(which), ids)
    # train rows use a window (max_len 10, stride 5) that may start earlier than the exact
    # context: compare valid/test exactly and train with stride-1 plans below
    for which in ("valid", "test"):
        ids = split.example_ids(which)
        got = reader.get(ids, keys=("topk_items", "topk_scores", "target"))
        want_items, want_scores = _brute_force(teacher, split, ids, 10, 7)
        assert torch.equal(got["topk_items"].long(), want_items)
        assert torch.allclose(got["topk_scores"], want_scores, atol=1e-5)
        assert torch.equal(got["target"].long(), torch.tensor([split.sequences[u][-(2 if which == "valid" else 1)]
                                                               for u in range(split.num_users)]))
        # the target is never in its own top-K; no history item is either
        assert not (got["topk_items"] == got["target"][:, None]).any()


def test_train_rows_exact_with_stride_one(tmp_path, teacher, dm, split):
    out = emit_signals(teacher, dm, tmp_path / "s", splits=["train"], train_stride=1, **SETTINGS)
    reader = TeacherSignals(out, split=split)
    ids = split.example_ids("train")
    rng = np.random.default_rng(0)
    pick = rng.choice(ids, 40, replace=False)
    got = reader.get(pick, keys=("topk_items", "topk_scores"))
    want_items, want_scores = _brute_force(teacher, split, pick, 10, 7)
    assert torch.equal(got["topk_items"].long(), want_items)
    assert torch.allclose(got["topk_scores"], want_scores, atol=1e-5)


def test_train_windows_cover_every_target_once(split):
    for stride in (1, 3, 10):
        plan = plan_split(split, "train", 10, train_stride=stride)
        assert np.array_equal(plan.example_ids, split.example_ids("train"))
        ctx = plan.row_pos - plan.win_start[plan.row_window]
        assert (ctx >= np.minimum(plan.row_pos, 10 - stride + 1)).all() and (ctx <= 10).all()
    every = plan_split(split, "train", 10, train_every=3)
    assert set(every.example_ids) <= set(split.example_ids("train")) and (every.row_pos % 3 == 1).all()


def test_manifest_and_shards(full_cache, split, teacher):
    man = json.loads((full_cache / "manifest.json").read_text())
    assert man["complete"] is True
    assert man["dataset"]["fingerprint"] == split.fingerprint
    assert man["teacher"]["adapter_sha256"] == teacher.trained_state_hash()
    assert man["teacher"]["base_model"]["weights_sha256"] == teacher.base_ref.weights_sha256
    assert man["k"] == 7 and man["layers"] == [1, 2] and man["dtypes"]["hidden"] == "float16"
    assert "user * 1048576 + pos" in man["example_id_scheme"]
    n_train = len(split.example_ids("train"))
    assert man["splits"]["train"]["num_shards"] == math.ceil(n_train / 150) > 1
    shard = load_file(str(full_cache / "train-00000.safetensors"))
    assert shard["hidden"].dtype == torch.float16 and shard["hidden"].shape == (150, 32)
    assert shard["layers"].shape == (150, 2, 32) and shard["topk_items"].dtype == torch.int32
    assert shard["example_id"].dtype == torch.int64
    # the last requested layer (2 = final norm output) equals `hidden`
    assert torch.equal(shard["layers"][:, 1], shard["hidden"])
    emb = load_file(str(full_cache / "item_embeddings.safetensors"))
    assert emb["item_embeddings"].shape == (split.num_items + 1, teacher.item_dim)
    assert not list(full_cache.glob("progress-*")) and not list(full_cache.glob(".*tmp*"))


def test_rerun_is_a_noop_and_mismatch_is_refused(full_cache, teacher, dm):
    before = {p.name: p.stat().st_mtime_ns for p in full_cache.glob("*.safetensors")}
    emit_signals(teacher, dm, full_cache, **SETTINGS)
    assert {p.name: p.stat().st_mtime_ns for p in full_cache.glob("*.safetensors")} == before
    with pytest.raises(CacheMismatchError, match=r"\bk\b.*--emit.overwrite"):
        emit_signals(teacher, dm, full_cache, **dict(SETTINGS, k=5))
    with pytest.raises(CacheMismatchError, match="layers"):
        emit_signals(teacher, dm, full_cache, **dict(SETTINGS, layers=[1]))
    other = SequentialDataModule.from_split(planted_split(num_users=50, num_items=30, mean_length=14, seed=2),
                                            max_len=10)
    with pytest.raises(CacheMismatchError, match="fingerprint"):
        emit_signals(teacher, other, full_cache, **SETTINGS)
    saved = teacher.out_proj.bias.detach().clone()
    with torch.no_grad():
        teacher.out_proj.bias.add_(1e-3)
    try:
        with pytest.raises(CacheMismatchError, match="adapter_sha256"):
            emit_signals(teacher, dm, full_cache, **SETTINGS)
    finally:
        with torch.no_grad():
            teacher.out_proj.bias.copy_(saved)
    # same weights, another scoring setting (as a load-time override gives it): another teacher
    template = teacher.hparams["text_template"]
    teacher.hparams["text_template"] = "Item: {text}"
    try:
        with pytest.raises(CacheMismatchError, match="settings_sha256"):
            emit_signals(teacher, dm, full_cache, **SETTINGS)
    finally:
        teacher.hparams["text_template"] = template
    where = teacher.hparams["embedding_cache_dir"]
    teacher.hparams["embedding_cache_dir"] = "/moved/elsewhere"
    try:  # a path is not a scoring setting: the complete cache is still this teacher's
        emit_signals(teacher, dm, full_cache, **SETTINGS)
    finally:
        teacher.hparams["embedding_cache_dir"] = where
    assert TeacherSignals(full_cache)  # still intact


def test_overwrite_rebuilds(tmp_path, teacher, dm):
    out = emit_signals(teacher, dm, tmp_path / "s", splits=["valid"], **SETTINGS)
    out = emit_signals(teacher, dm, out, splits=["valid"], overwrite=True, **dict(SETTINGS, k=3))
    assert TeacherSignals(out).k == 3


class _Crash(L.Callback):
    def __init__(self, after: int) -> None:
        self.after, self.seen = after, 0

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.seen += 1
        if self.seen >= self.after:
            raise RuntimeError("simulated crash")


def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, full_cache, teacher, dm):
    out = tmp_path / "signals"
    # 1) a deliberate partial run: stop after one shard
    emit_signals(teacher, dm, out, max_new_shards=1, **SETTINGS)
    man = json.loads((out / "manifest.json").read_text())
    assert man["complete"] is False and len(man["splits"]["train"]["shards"]) == 1
    with pytest.raises(CacheMismatchError, match="incomplete"):
        TeacherSignals(out)
    # 2) a crash in the middle of the next shards (raised from a callback)
    with pytest.raises(RuntimeError, match="simulated crash"):
        emit_signals(teacher, dm, out, callbacks=[_Crash(after=30)], **SETTINGS)
    first = (out / "train-00000.safetensors").stat().st_mtime_ns
    # 3) resume to the end
    emit_signals(teacher, dm, out, **SETTINGS)
    assert (out / "train-00000.safetensors").stat().st_mtime_ns == first  # not recomputed
    for shard in sorted(full_cache.glob("*-*.safetensors")):
        x, y = load_file(str(shard)), load_file(str(out / shard.name))
        assert x.keys() == y.keys()
        for key in x:
            assert torch.equal(x[key], y[key]), (shard.name, key, (x[key].float() - y[key].float()).abs().max())
    a, b = json.loads((out / "manifest.json").read_text()), json.loads((full_cache / "manifest.json").read_text())
    assert a["complete"] is True and a["splits"] == b["splits"]  # identical sha256 per shard


def test_resume_with_fewer_splits_does_not_mark_an_unfinished_cache_complete(tmp_path, full_cache, teacher, dm):
    """A later run over a subset of the splits finishes only those: the splits an earlier run left
    unfinished keep the cache incomplete (the reader would otherwise serve a part of them as all)."""
    out = tmp_path / "signals"
    emit_signals(teacher, dm, out, max_new_shards=1, **SETTINGS)  # train-00000 only
    with pytest.raises(RuntimeError, match="simulated crash"):  # writes more train shards, then dies
        emit_signals(teacher, dm, out, callbacks=[_Crash(after=12)], **SETTINGS)
    written = {p.name for p in out.glob("train-*.safetensors")}
    assert 2 <= len(written) < json.loads((out / "manifest.json").read_text())["splits"]["train"]["num_shards"]
    emit_signals(teacher, dm, out, **dict(SETTINGS, splits=["valid"]))
    man = json.loads((out / "manifest.json").read_text())
    train = man["splits"]["train"]
    assert len(train["shards"]) < train["num_shards"]
    assert man["complete"] is False
    with pytest.raises(CacheMismatchError, match="incomplete"):
        TeacherSignals(out)
    assert set(train["shards"]) == written  # the crashed run's shards are kept on record, not forgotten
    emit_signals(teacher, dm, out, **SETTINGS)
    a, b = json.loads((out / "manifest.json").read_text()), json.loads((full_cache / "manifest.json").read_text())
    assert a["complete"] is True and a["splits"] == b["splits"]


@pytest.mark.parametrize("bad, field", [
    ({"k": 0}, "emit.k"), ({"k": 31}, "emit.k"), ({"splits": ["val"]}, "emit.splits"),
    ({"layers": [3]}, "emit.layers"), ({"train_every": 0}, "emit.train_every"),
    ({"train_stride": 11}, "emit.train_stride"), ({"shard_size": 0}, "emit.shard_size"),
    ({"batch_size": 0}, "emit.batch_size"), ({"max_new_shards": 0}, "emit.max_new_shards"),
    ({"item_chunk_size": 0}, "item_chunk_size"),
], ids=lambda v: "-".join(f"{k}={v[k]}" for k in v) if isinstance(v, dict) else None)
def test_a_bad_emit_setting_is_a_one_line_user_error_before_anything_is_written(tmp_path, teacher, dm, split,
                                                                                  bad, field):
    """An impossible setting (here the split has 30 items, max_len 10, the teacher 2 layers) names its
    field in one line, as the CLI shows it, and leaves no cache behind: a half-written manifest with
    that setting would refuse the corrected run as a mismatch."""
    from recdistill.errors import UserError, user_message

    assert split.num_items == 30 and dm.max_len == 10
    out = tmp_path / "signals"
    with pytest.raises(ValueError) as info:
        emit_signals(teacher, dm, out, **dict(SETTINGS, **bad))
    assert isinstance(info.value, UserError), repr(info.value)
    message = user_message(info.value)
    assert message is not None and field in message and "\n" not in str(info.value)
    assert not out.exists()


def test_corrupt_shard_is_recomputed(tmp_path, full_cache, teacher, dm):
    import shutil

    out = tmp_path / "s"
    shutil.copytree(full_cache, out)
    victim = out / "train-00001.safetensors"
    victim.write_bytes(victim.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(CacheMismatchError, match="corrupt"):
        TeacherSignals(out, verify=True)
    emit_signals(teacher, dm, out, **SETTINGS)
    assert victim.read_bytes() == (full_cache / victim.name).read_bytes()


def test_reader_shuffled_ids_and_unknown_ids(full_cache, split):
    reader = TeacherSignals(full_cache, split=split)
    ids = np.concatenate([split.example_ids(s) for s in ("train", "valid", "test")])
    assert len(reader) == len(ids)
    perm = np.random.default_rng(0).permutation(ids)[:200]
    got = reader.get(torch.from_numpy(perm), keys=("hidden", "layers", "user", "topk_items", "topk_scores", "target"))
    # compare with a direct read of every shard
    rows = {}
    for shard in full_cache.glob("*-*.safetensors"):
        t = load_file(str(shard))
        for i, e in enumerate(t["example_id"].tolist()):
            rows[e] = {k: v[i] for k, v in t.items()}
    for j, e in enumerate(perm.tolist()):
        for key, value in got.items():
            assert torch.equal(value[j], rows[e][key])
    with pytest.raises(KeyError, match="not in signals cache"):
        reader.get([int(ids[0]), 123456789])
    with pytest.raises(KeyError, match="unknown signal"):
        reader.get([int(ids[0])], keys=("logits",))
    other = planted_split(num_users=50, num_items=31, mean_length=14, seed=1)
    with pytest.raises(CacheMismatchError, match="num_items"):
        TeacherSignals(full_cache, split=other)
    reader.verify()


def test_hybrid_teacher_with_a_collaborative_model_emits_its_fused_ranking(tmp_path, split, dm):
    """A teacher fused with a frozen SASRec (logit level) emits the top-K of the fused scores."""
    from recdistill.student import SASRec

    tiny = make_tiny_llama(tmp_path / "tiny", texts=split.item_text, num_layers=2)
    torch.manual_seed(1)
    cf = SASRec(num_items=split.num_items, hidden_size=8, num_layers=1, max_len=10)
    t = HLLMTeacher(num_items=split.num_items, item_text=split.item_text, base_model=str(tiny), num_layers=2,
                    embedding_cache_dir=str(tmp_path / "emb"), progress=False, collaborative_model=cf).eval()
    t.fusion_alpha.fill_(0.4)  # a real mixture of the two rankings
    out = emit_signals(t, dm, tmp_path / "signals", **{**SETTINGS, "layers": [2]}, splits=["valid", "test"])
    reader = TeacherSignals(out, split=split)
    for which in ("valid", "test"):
        ids = split.example_ids(which)
        got = reader.get(ids, keys=("topk_items", "topk_scores", "user"))
        want_items, want_scores = _brute_force(t, split, ids, 10, 7)
        assert torch.equal(got["topk_items"].long(), want_items)
        assert torch.allclose(got["topk_scores"], want_scores, atol=1e-4)
        assert got["user"].shape[1] == t.item_dim + 8  # LLM user vector + the CF state
