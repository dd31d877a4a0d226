"""Full teacher scores from the cache alone: score_user . score_items == the teacher's own logits,
for every teacher kind and fusion, and the rebuilt top-K equals the stored top-K."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from recdistill.data import EXAMPLE_STRIDE, SequentialDataModule
from recdistill.teacher.cache_format import MissingSignalError
from recdistill.teacher.cache_reader import TeacherSignals
from recdistill.teacher.emit import emit_signals
from recdistill.teacher.hllm import HLLMTeacher
from recdistill.teacher.testing import make_tiny_llama, planted_split

warnings.filterwarnings("ignore", ".*does not have many workers.*")

MAX_LEN = 8
K = 6
WORDS = "a user watched these movies in order the next movie will watch is"


@pytest.fixture(scope="module")
def split():
    return planted_split(num_users=24, num_items=25, mean_length=10, seed=5)


@pytest.fixture(scope="module")
def dm(split):
    return SequentialDataModule.from_split(split, max_len=MAX_LEN, batch_size=16, eval_batch_size=32)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, split):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny"), texts=list(split.item_text) + [WORDS], num_layers=2)


def _perturb(t):
    with torch.no_grad():
        for name, p in t.backbone.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
        if t.hparams.item_bias:
            t.item_bias.normal_(0, 1.0)
        t.log_scale.fill_(math.log(7.0))
    return t.eval()


def _build(kind: str, split, tiny, tmp_path):
    from recdistill.student import Caser, SASRec

    common = dict(num_items=split.num_items, item_text=split.item_text, base_model=str(tiny), num_layers=2,
                  embedding_cache_dir=str(tmp_path / "emb"), progress=False, dropout=0.0)
    torch.manual_seed(3)
    if kind == "plain":
        return _perturb(HLLMTeacher(**common, item_bias=True, item_table="fusion"))
    if kind == "ensemble":
        cf = SASRec(num_items=split.num_items, hidden_size=8, num_layers=1, max_len=MAX_LEN).eval()
        t = _perturb(HLLMTeacher(**common, item_bias=True, collaborative_model=cf))
        t.fusion_alpha.fill_(0.3)
        return t
    if kind == "joint":
        cf = Caser(num_items=split.num_items, hidden_size=8, window=3, num_horizontal=2, num_vertical=2).eval()
        with torch.no_grad():
            cf.output.bias.normal_(0, 1.0)  # an affine CF score: its bias must land in the cache too
        t = _perturb(HLLMTeacher(**common, item_bias=True, collaborative_model=cf, collaborative_fusion="joint"))
        with torch.no_grad():
            t.collab_weight.fill_(0.7)
        return t
    if kind == "text_prompt":
        from recdistill.teacher.text_prompt import TextPromptTeacher

        return _perturb(TextPromptTeacher(**common, item_bias=True, max_history_items=5, title_max_tokens=3))
    raise ValueError(kind)


def _context(split, eid):
    u, p = divmod(int(eid), EXAMPLE_STRIDE)
    seq = split.sequences[u]
    return seq, p, torch.tensor(seq[max(0, p - MAX_LEN):p]).unsqueeze(0)


@pytest.mark.parametrize("kind", ["plain", "ensemble", "joint", "text_prompt"])
def test_rebuilt_logits_equal_the_teachers_own(kind, split, dm, tiny, tmp_path):
    teacher = _build(kind, split, tiny, tmp_path)
    out = emit_signals(teacher, dm, tmp_path / "signals", k=K, splits=["valid", "test"], shard_size=10,
                       batch_size=5, item_chunk_size=7, trainer_kwargs={"enable_progress_bar": False})
    man = json.loads((out / "manifest.json").read_text())
    assert man["format_version"] == 2 and "score_user" in man["scoring"] and "score_user" in man["signals"]
    names = [b["name"] for b in man["score_blocks"]]
    assert names == (["llm_cosine", "bias", "collaborative"] if kind in ("ensemble", "joint") else ["llm_cosine", "bias"])
    reader = TeacherSignals(out, split=split)
    reader.require(("teacher_logits", "topk_items"))
    ids = np.concatenate([split.example_ids("valid"), split.example_ids("test")])
    logits, valid = reader.teacher_logits(torch.from_numpy(ids))
    assert valid.all() and logits.shape == (len(ids), split.num_items + 1) and torch.isinf(logits[:, 0]).all()
    stored = reader.get(ids, keys=("topk_items", "topk_scores"))
    for j, eid in enumerate(ids):
        seq, p, ctx = _context(split, eid)
        with torch.no_grad():
            want = teacher(ctx)[0]
        got = logits[j]
        assert torch.allclose(got[1:], want[1:], atol=1e-4, rtol=1e-4), (kind, (got - want)[1:].abs().max())
        masked = got.clone()
        masked[torch.tensor(seq[:p + 1])] = -math.inf  # history masked, target excluded (emit defaults)
        masked[0] = -math.inf
        top = torch.topk(masked, K)
        assert torch.equal(top.indices, stored["topk_items"][j].long()), (kind, eid)
        assert torch.allclose(top.values, stored["topk_scores"][j], atol=1e-4)
    # per-example items (top-K + target) and shared items give the same numbers as the full row
    items = torch.cat([stored["topk_items"].long(), torch.from_numpy(np.array(
        [_context(split, e)[0][_context(split, e)[1]] for e in ids]))[:, None]], 1)
    sub, _ = reader.teacher_logits(ids, items)
    assert torch.allclose(sub, logits.gather(1, items), atol=1e-5)
    shared, _ = reader.teacher_logits(ids[:3], torch.tensor([0, 4, 2]))
    assert torch.isinf(shared[:, 0]).all() and torch.allclose(shared[:, 1:], logits[:3][:, [4, 2]], atol=1e-5)


def test_a_factorisation_that_does_not_rebuild_the_scores_is_refused(split, dm, tiny, tmp_path, monkeypatch):
    teacher = _build("plain", split, tiny, tmp_path)
    real = HLLMTeacher.score_item_factors

    def wrong(self, start=0, stop=None):  # e.g. a future teacher that forgets its item bias
        table = real(self, start, stop).clone()
        table[:, -1] = 0
        return table

    monkeypatch.setattr(HLLMTeacher, "score_item_factors", wrong)
    with pytest.raises(RuntimeError, match="do not rebuild"):
        emit_signals(teacher, dm, tmp_path / "signals", k=K, splits=["valid"],
                     trainer_kwargs={"enable_progress_bar": False})


def test_teacher_logits_with_partial_coverage_and_missing_scores(split, dm, tiny, tmp_path):
    teacher = _build("plain", split, tiny, tmp_path)
    out = emit_signals(teacher, dm, tmp_path / "signals", k=K, splits=["train"], train_every=3,
                       trainer_kwargs={"enable_progress_bar": False})
    reader = TeacherSignals(out, split=split)
    all_train = split.example_ids("train")
    batch = torch.from_numpy(np.concatenate([all_train[:12], [0, 0]])).reshape(2, 7)
    logits, valid = reader.teacher_logits(batch)
    assert logits.shape == (2, 7, split.num_items + 1) and valid.shape == (2, 7)
    covered = torch.tensor([int(e) in reader for e in batch.reshape(-1)]).reshape(2, 7)
    assert torch.equal(valid, covered) and 0 < int(valid.sum()) < 14 and not valid[1, -2:].any()
    assert (logits[~valid][:, 1:] == 0).all()
    # the DLLM2Rec importer stores no teacher scores: require names what is missing and how to get it
    from recdistill.teacher.dllm2rec_import import import_dllm2rec

    eids = split.example_ids("valid")
    np.savetxt(tmp_path / "top.txt", np.tile(np.arange(K), (len(eids), 1)), fmt="%d")
    imported = import_dllm2rec(tmp_path / "imported", split, which="valid", topk_file=tmp_path / "top.txt",
                               example_ids=eids, id_mapping=list(range(1, split.num_items + 1)))
    r2 = TeacherSignals(imported, split=split)
    with pytest.raises(MissingSignalError, match=r"signal 'score_user' was not emitted into .*recdistill teacher emit"):
        r2.require(("teacher_logits",))
    with pytest.raises(MissingSignalError, match="score_user"):
        r2.teacher_logits(eids[:2])
