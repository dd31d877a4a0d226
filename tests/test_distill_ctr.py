"""CTR students distilled from a sequential teacher: leakage guard, calibration, soft labels by example id."""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import pytest
import torch

from recdistill.data import CTRDataModule, EXAMPLE_STRIDE, build_sequential_split, synthetic_interactions
from recdistill.data.ctr import ctr_examples, ctr_train_prefix
from recdistill.distill.ctr_module import DistilledCTRRecommender, fit_platt
from recdistill.student import build_student
from recdistill.teacher.cache_writer import write_cache

warnings.filterwarnings("ignore", ".*does not have many workers.*")


@pytest.fixture(scope="module")
def split():
    return build_sequential_split(synthetic_interactions(60, 30, mean_length=15, seed=5))


def _cache(split, directory, d=4, seed=0):
    """A cache over every position of ``split`` with random score factors (a stand-in teacher)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.tensor([u * EXAMPLE_STRIDE + p for u, seq in enumerate(split.sequences) for p in range(1, len(seq))])
    rows = {"train": {"example_id": ids, "score_user": torch.randn(len(ids), d, generator=g),
                      "hidden": torch.randn(len(ids), 6, generator=g).half()}}
    tables = {"item_embeddings": torch.randn(split.num_items + 1, 6, generator=g),
              "score_items": torch.randn(split.num_items + 1, d, generator=g)}
    return write_cache(directory, rows, split=split, item_tables=tables, teacher={"kind": "random"})


def _module(dm, cache, terms):
    torch.manual_seed(0)
    student = build_student("deepfm", field_dims=dm.field_dims, dense_dim=dm.dense_dim, num_items=dm.num_items)
    return DistilledCTRRecommender(student, signals=str(cache), terms=terms, field_dims=dm.field_dims,
                                   dense_dim=dm.dense_dim, num_items=dm.num_items)


def _trainer():
    return L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0)


def test_prefix_split_holds_exactly_the_ctr_training_events(split):
    prefix = ctr_train_prefix(split)
    examples = ctr_examples(split)
    lengths = prefix.lengths
    assert (np.bincount(examples["train"].user, minlength=split.num_users) == lengths).all()
    assert (examples["valid"].pos >= lengths[examples["valid"].user]).all()
    assert (examples["test"].pos >= lengths[examples["test"].user]).all()
    assert prefix.fingerprint != split.fingerprint and prefix.item_ids is split.item_ids


def test_a_cache_from_a_teacher_that_saw_the_ctr_holdout_is_refused(split, tmp_path):
    dm = CTRDataModule.from_split(split, batch_size=64)
    leaking = _cache(split, tmp_path / "leaking")
    with pytest.raises(Exception, match="leakage.*data.holdout: ctr"):
        _trainer().fit(_module(dm, leaking, [{"name": "ctr_soft_bce"}]), datamodule=dm)


def test_soft_labels_read_the_calibrated_teacher_score_of_each_row(split, tmp_path):
    dm = CTRDataModule.from_split(split, batch_size=64)
    cache = _cache(ctr_train_prefix(split), tmp_path / "ok")
    module = _module(dm, cache, [{"name": "ctr_soft_bce", "params": {"alpha": 1.0}},
                                 {"name": "contrastive", "weight": 0.1}])
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value.detach() if hasattr(value, "detach") else value))  # type: ignore[method-assign]
    _trainer().fit(module, datamodule=dm)
    assert module.calibration[2] == 1.0  # fitted once, kept in the checkpoint
    batch = next(iter(dm.train_dataloader()))
    out = module.task_loss(batch)
    context, coverage = module._context(out, batch)
    assert 0.9 < coverage < 1.0  # position 0 of each user has no teacher row
    # the soft label of a row is sigmoid(a * score_user[e] . score_items[item] + b)
    reader = module.signals
    found, valid = reader.lookup(batch["example_id"], ["score_user"])
    z = (found["score_user"][valid] * reader.score_items()[batch["item"][valid]]).sum(-1)
    a, b = module.calibration[:2]
    assert torch.allclose(context["teacher_logits"], a * z + b, atol=1e-5)
    assert "distill/ctr_soft_bce" in logged and "distill/contrastive" in logged


def test_platt_scaling_recovers_a_planted_calibration():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, generator=g) * 3 + 5
    y = torch.bernoulli(torch.sigmoid(0.5 * z - 2.0), generator=g)
    a, b = fit_platt(z, y)
    assert a == pytest.approx(0.5, abs=0.05) and b == pytest.approx(-2.0, abs=0.25)


def test_a_sequence_only_term_is_refused_for_ctr(split, tmp_path):
    dm = CTRDataModule.from_split(split, batch_size=64)
    cache = _cache(ctr_train_prefix(split), tmp_path / "c")
    with pytest.raises(ValueError, match="does not have"):
        _module(dm, cache, [{"name": "rd"}])


@pytest.mark.parametrize("term", ["ctr_soft_bce", "contrastive"])
def test_a_cache_without_training_rows_fails_loudly(split, tmp_path, term):
    """A cache whose example ids match no CTR training row: the calibration (teacher scores) or the first
    epoch (other terms) fails with one line naming the fix, instead of a traceback or a silent plain fit."""
    from recdistill.errors import user_message
    from recdistill.teacher.cache_format import MissingSignalError

    dm = CTRDataModule.from_split(split, batch_size=64)
    prefix = ctr_train_prefix(split)
    g = torch.Generator().manual_seed(0)
    ids = torch.tensor([u * EXAMPLE_STRIDE + len(seq) + 1000 for u, seq in enumerate(prefix.sequences)])  # no such event
    rows = {"valid": {"example_id": ids, "score_user": torch.randn(len(ids), 4, generator=g),
                      "hidden": torch.randn(len(ids), 6, generator=g).half()}}
    tables = {"item_embeddings": torch.randn(split.num_items + 1, 6, generator=g),
              "score_items": torch.randn(split.num_items + 1, 4, generator=g)}
    cache = write_cache(tmp_path / "elsewhere", rows, split=prefix, item_tables=tables, teacher={"kind": "random"})
    module = _module(dm, cache, [{"name": term, "params": {"alpha": 1.0}} if term == "ctr_soft_bce" else {"name": term}])
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    with pytest.raises(MissingSignalError, match="emit the teacher on the training split") as err:
        _trainer().fit(module, datamodule=dm)
    assert user_message(err.value) is not None
