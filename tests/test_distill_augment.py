"""Teacher pseudo-interactions (``augment``): value, exclusions, coverage, gradients, set-up, planted gain."""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch

from recdistill.data import SequentialDataModule
from recdistill.distill.module import DistilledSequentialRecommender
from recdistill.distill.registry import DISTILL_LOSSES, build_loss
from recdistill.student import build_student
from recdistill.teacher.cache_format import MissingSignalError
from recdistill.teacher.testing import planted_oracle_cache, planted_split

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def _brute(logits, ids, target, history, m, scores=None, min_score=None, normalize=False, output="softmax"):
    total = 0.0
    for b in range(logits.shape[0]):
        chosen = []
        for j, item in enumerate(ids[b].tolist()):
            seen = history is not None and item in history[b].tolist()
            low = min_score is not None and float(scores[b, j]) < min_score
            if item > 0 and item != int(target[b]) and not seen and not low and len(chosen) < m:
                chosen.append(item)
        row = logits[b].tolist()
        norm = math.log(sum(math.exp(v) for v in row[1:]))
        for item in chosen:
            nll = norm - row[item] if output == "softmax" else math.log1p(math.exp(-row[item]))
            total += nll / (len(chosen) if normalize else 1)
    return total / logits.shape[0]


def _tiny():
    torch.manual_seed(0)
    logits = torch.randn(4, 13)
    ids = torch.tensor([[3, 5, 7, 9, 2], [4, 6, 0, 8, 1], [2, 3, 11, 12, 10], [5, 6, 7, 8, 9]])
    target = torch.tensor([5, 6, 11, 1])
    history = torch.tensor([[0, 0, 3, 1], [0, 0, 0, 4], [2, 3, 12, 10], [0, 0, 0, 0]])
    scores = torch.tensor([[5.0, 4, 3, 2, 1], [3, 2.5, 0, 1, 0.5], [9, 8, 7, 6, 5], [1, 0.9, 0.8, 0.7, 0.6]])
    return logits, ids, target, history, scores


@pytest.mark.parametrize("m, normalize, output", [(1, False, "softmax"), (2, False, "softmax"),
                                                  (3, True, "softmax"), (2, False, "sigmoid")])
def test_matches_brute_force_with_seen_and_target_excluded(m, normalize, output):
    logits, ids, target, history, _ = _tiny()
    loss = build_loss("augment", m=m, normalize=normalize, student_output=output)
    got = loss(logits, ids, target=target, history=history)
    assert float(got) == pytest.approx(_brute(logits, ids, target, history, m, normalize=normalize, output=output),
                                       rel=1e-5)
    # row 2: every listed item is either seen or the target: no pseudo-interaction, the row adds 0
    assert float(build_loss("augment", m=m, reduction="none", student_output=output)(
        logits, ids, target=target, history=history)[2]) == 0.0


def test_min_score_threshold_and_without_seen_filter():
    logits, ids, target, history, scores = _tiny()
    loss = build_loss("augment", m=2, min_score=2.0)
    assert float(loss(logits, ids, target=target, history=history, teacher_topk_scores=scores)) == pytest.approx(
        _brute(logits, ids, target, history, 2, scores=scores, min_score=2.0), rel=1e-5)
    open_loss = build_loss("augment", m=2, exclude_seen=False)
    assert float(open_loss(logits, ids, target=target)) == pytest.approx(_brute(logits, ids, target, None, 2), rel=1e-5)
    assert set(DISTILL_LOSSES["augment"].distill_inputs({"exclude_seen": False})) == {
        "student_logits", "student_log_probs", "teacher_topk_ids", "target"}
    assert "student_log_probs" not in DISTILL_LOSSES["augment"].distill_inputs({"student_output": "sigmoid"})


def test_gradients_reach_the_student_only():
    logits, ids, target, history, scores = _tiny()
    logits.requires_grad_(True)
    scores = scores.clone().requires_grad_(True)
    build_loss("augment", m=2, min_score=0.0)(logits, ids, target=target, history=history,
                                              teacher_topk_scores=scores).backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    assert scores.grad is None


# -- through the distillation module ------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    return planted_split(num_users=40, num_items=80, mean_length=14, seed=4, pattern_strength=0.5)


def _sasrec(split, max_len=10):
    torch.manual_seed(0)
    return build_student("sasrec", num_items=split.num_items, hidden_size=16, num_layers=1, num_heads=1,
                         dropout=0.0, max_len=max_len)


@pytest.mark.parametrize("every", [3, 1])  # partial coverage (rows picked) and full coverage (tensors as they are)
def test_module_averages_over_covered_positions_with_the_window_as_history(small, tmp_path, every):
    cache = planted_oracle_cache(small, tmp_path / "signals", num_items=80, seed=4, every=every)
    module = DistilledSequentialRecommender(_sasrec(small), signals=str(cache), num_items=small.num_items,
                                            terms=[{"name": "augment", "weight": 0.5, "params": {"m": 2}}])
    dm = SequentialDataModule.from_split(small, max_len=10, batch_size=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    logged: dict[str, float] = {}
    def log(name: str, value, **kw) -> None:
        logged[name] = float(value.detach() if hasattr(value, "detach") else value)

    module.log = log  # type: ignore[method-assign]
    total = module.training_step(batch, 0)
    out = module.task_loss(batch)
    found, valid = module.signals.lookup(batch["example_ids"][out.positions], ["topk_items"])
    assert (0 < float(valid.float().mean()) < 1) if every > 1 else bool(valid.all())
    assert logged["distill/coverage"] == pytest.approx(float(valid.float().mean()))
    # history by hand: the window up to and including each supervised position
    rows, cols = out.positions.nonzero(as_tuple=True)
    history = torch.stack([torch.cat([batch["input_ids"][r, : c + 1], torch.zeros(batch["input_ids"].shape[1] - c - 1,
                                                                                    dtype=torch.long)])
                           for r, c in zip(rows.tolist(), cols.tolist())])
    expected = _brute(out.logits[valid].detach(), found["topk_items"][valid].long(), out.labels[valid],
                      history[valid], 2)
    assert logged["distill/augment"] == pytest.approx(expected, rel=1e-5)
    assert float(total) == pytest.approx(float(out.loss) + 0.5 * expected, rel=1e-5)
    total.backward()
    assert module.student.item_embedding.weight.grad.abs().sum() > 0


def test_missing_scores_fail_at_setup_naming_the_emit_setting(small, tmp_path):
    cache = planted_oracle_cache(small, tmp_path / "signals", num_items=80, seed=4, scores=False)
    with pytest.raises(MissingSignalError, match="topk_scores.*emit"):
        DistilledSequentialRecommender(_sasrec(small), signals=str(cache), num_items=small.num_items,
                                       terms=[{"name": "augment", "params": {"min_score": 1.0}}])


def test_pseudo_interactions_beat_the_plain_student_when_the_teacher_knows_the_pattern(small, tmp_path):
    from recdistill.student.tasks import SequentialRecommender

    cache = planted_oracle_cache(small, tmp_path / "signals", num_items=80, seed=4)

    def test_ndcg(augment: bool) -> float:
        L.seed_everything(0)
        dm = SequentialDataModule.from_split(small, max_len=10, batch_size=32)
        student = _sasrec(small)
        # the confident pseudo-items only: the teacher's rank-1 item (score 5; the rest score 4 and below)
        terms = [{"name": "augment", "weight": 0.5, "params": {"m": 1, "min_score": 4.5}}]
        module = (DistilledSequentialRecommender(student, signals=str(cache), num_items=small.num_items, lr=5e-3,
                                                 terms=terms)
                  if augment else SequentialRecommender(student, lr=5e-3))
        trainer = L.Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, deterministic=True)
        trainer.fit(module, datamodule=dm)
        return trainer.test(module, datamodule=dm, verbose=False)[0]["test/ndcg@10"]

    plain, augmented = test_ndcg(False), test_ndcg(True)
    assert augmented > plain + 0.03, (plain, augmented)


@pytest.mark.parametrize("name, kwargs", [("bert4rec", dict(hidden_size=16, num_layers=1, num_heads=1, dropout=0.0,
                                                              max_len=11)),
                                          ("gru4rec", dict(hidden_size=16, dropout=0.0))])
def test_other_students_get_their_window_as_history(small, tmp_path, name, kwargs):
    cache = planted_oracle_cache(small, tmp_path / "signals", num_items=80, seed=4)
    torch.manual_seed(0)
    student = build_student(name, num_items=small.num_items, **kwargs)
    module = DistilledSequentialRecommender(student, signals=str(cache), num_items=small.num_items,
                                            terms=[{"name": "augment", "weight": 0.5}])
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    dm = SequentialDataModule.from_split(small, max_len=10, batch_size=16)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    out = module.task_loss(batch)
    history = module._history(out)
    assert history.shape[0] == out.logits.shape[0] and int(history.max()) <= small.num_items  # no mask token
    loss = module.training_step(batch, 0)
    assert torch.isfinite(loss)
