"""KAR-style knowledge features: frozen teacher vectors through a trainable adapter into a CTR student.

The adapter trains and the tables stay frozen; the saved student reloads (and exports) without the
cache; user vectors come from CTR training rows only; on a planted problem where the label is a
hidden item attribute that only the teacher's item vectors carry (items unseen in training), the
knowledge-augmented student beats the same student without them.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch

from recdistill.data import CTRDataModule, EXAMPLE_STRIDE, build_sequential_split
from recdistill.data.ctr import ctr_train_prefix
from recdistill.data.schema import Interactions
from recdistill.distill.ctr_module import DistilledCTRRecommender
from recdistill.distill.knowledge_features import KnowledgeSpec, build_knowledge_tables
from recdistill.metrics import ctr_metrics
from recdistill.student import build_student
from recdistill.student.io import load_student, save_student
from recdistill.student.knowledge_features import KnowledgeAugmentedCTR
from recdistill.student.tasks import CTRRecommender
from recdistill.teacher.cache_reader import TeacherSignals
from recdistill.teacher.cache_writer import write_cache

warnings.filterwarnings("ignore", ".*does not have many workers.*")

SEEN, UNSEEN, EVENTS, USERS, D = 30, 20, 20, 60, 8
DEEPFM = {"embed_dim": 8, "mlp_dims": (16,), "dropout": 0.0}
KNOWLEDGE = {"adapter_dim": 4, "num_experts": 2, "expert_hidden": 16}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def planted():
    """Label = a hidden binary attribute of the item (10% noise). Training events use items 1..SEEN;
    the last 4 events of every user (CTR valid + test) use items never seen in training."""
    rng = np.random.default_rng(0)
    attribute = rng.integers(0, 2, SEEN + UNSEEN + 1)
    train = rng.integers(1, SEEN + 1, (USERS, EVENTS - 4))
    held_out = SEEN + 1 + (np.arange(USERS * 4).reshape(USERS, 4) % UNSEEN)  # every unseen item appears
    items_arr = np.concatenate([train, held_out], axis=1).reshape(-1)
    users = np.repeat(np.arange(1, USERS + 1), EVENTS)
    label = attribute[items_arr].astype(bool) ^ (rng.random(len(items_arr)) < 0.1)
    frame = pd.DataFrame({"user_id": users, "item_id": items_arr, "timestamp": np.arange(len(items_arr)),
                          "rating": np.where(label, 5.0, 1.0)})
    split = build_sequential_split(Interactions("planted-kar", frame))
    assert split.num_items == SEEN + UNSEEN and (split.item_ids == np.arange(1, SEEN + UNSEEN + 1)).all()
    return split, attribute


def _cache(split, directory: Path, attribute: np.ndarray | None = None, every_position: bool = False) -> Path:
    """A stand-in teacher: random ``score_user``/``user`` rows (``user`` row = [user, pos, 0..]) and
    item vectors carrying the planted attribute along one direction. Written for the CTR training
    prefix (the leakage guard's fingerprint); ``every_position`` also writes rows at the CTR
    valid/test positions, which the builder must never read."""
    g = torch.Generator().manual_seed(1)
    prefix = ctr_train_prefix(split)
    source = split if every_position else prefix
    ids = torch.tensor([u * EXAMPLE_STRIDE + p for u, seq in enumerate(source.sequences) for p in range(1, len(seq))])
    marks = torch.zeros(len(ids), D)
    marks[:, 0], marks[:, 1] = ids // EXAMPLE_STRIDE + 1, ids % EXAMPLE_STRIDE
    rows = {"train": {"example_id": ids, "score_user": torch.randn(len(ids), D, generator=g), "user": marks.half()}}
    items = torch.randn(split.num_items + 1, D, generator=g) * 0.3
    if attribute is not None:
        items[:, 0] += torch.as_tensor(2.0 * attribute - 1.0, dtype=torch.float32)
    items[0] = 0.0
    tables = {"item_embeddings": items.clone(), "score_items": items}
    return write_cache(directory, rows, split=prefix, item_tables=tables, teacher={"kind": "planted"})


def _trainer(epochs: int, callbacks=()) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, limit_val_batches=0, callbacks=list(callbacks), deterministic=True)


def _kar_module(dm: CTRDataModule, cache: Path, **options) -> DistilledCTRRecommender:
    torch.manual_seed(0)
    base = build_student("deepfm", field_dims=dm.field_dims, dense_dim=dm.dense_dim + KNOWLEDGE["adapter_dim"],
                         num_items=dm.num_items, **DEEPFM)
    return DistilledCTRRecommender(base, signals=str(cache), terms=[], field_dims=dm.field_dims, dense_dim=dm.dense_dim,
                                   num_items=dm.num_items, lr=1e-2, knowledge_features={**KNOWLEDGE, **options})


def _test_auc(model: torch.nn.Module, dm: CTRDataModule) -> float:
    model.eval()
    with torch.no_grad():
        rows = [(model(b["sparse"], b["dense"], b["history"]), b["label"], b["user"]) for b in dm.dataloader("test")]
    logits, labels, users = (torch.cat(x) for x in zip(*rows))
    return float(ctr_metrics(logits, labels, users)["auc"])


class _Snapshot(L.Callback):
    def on_train_start(self, trainer, module) -> None:
        self.buffers = {k: v.clone() for k, v in module.student.named_buffers()}
        self.adapter = {k: v.detach().clone() for k, v in module.student.adapter.named_parameters()}


def test_adapter_trains_tables_stay_frozen_and_the_saved_student_needs_no_cache(planted, tmp_path):
    split, attribute = planted
    dm = CTRDataModule.from_split(split, batch_size=128)
    cache = _cache(split, tmp_path / "signals", attribute)
    module = _kar_module(dm, cache)
    assert isinstance(module.student, KnowledgeAugmentedCTR)
    assert not any(name.endswith(("user_vectors", "item_vectors")) for name, _ in module.named_parameters())
    snapshot = _Snapshot()
    _trainer(2, [snapshot]).fit(module, datamodule=dm)
    student = module.student
    assert float(student.item_vectors.abs().sum()) > 0 and float(student.user_known[1:].min()) == 1.0
    for name, before in snapshot.buffers.items():  # frozen: not one value moved
        assert torch.equal(before, dict(student.named_buffers())[name]), name
    moved = [k for k, v in student.adapter.named_parameters() if not torch.equal(v.detach(), snapshot.adapter[k])]
    assert moved and all(p.grad is not None for p in student.adapter.parameters())
    # saved: the plain wrapper, its tables are weights; the cache is gone when it is loaded
    folder = save_student(student, tmp_path / "student")
    shutil.rmtree(tmp_path / "signals")
    assert "signals" not in (folder / "student.json").read_text()
    loaded = load_student(folder)
    batch = next(iter(dm.dataloader("test")))
    inputs = (batch["sparse"], batch["dense"], batch["history"])
    student.eval()
    torch.testing.assert_close(loaded(*inputs), student(*inputs), rtol=0, atol=0)


def test_the_trained_student_exports_to_onnx_with_parity(planted, tmp_path):
    from recdistill.distill.knowledge_features import fill_from_datamodule
    from recdistill.export.onnx_export import export_onnx

    split, attribute = planted
    dm = CTRDataModule.from_split(split, batch_size=128)
    module = _kar_module(dm, _cache(split, tmp_path / "signals", attribute))  # tables filled as setup does:
    fill_from_datamodule(module.student, module.signals, dm, module.knowledge)
    result = export_onnx(module.student.eval(), tmp_path / "kar.onnx", parity_shapes=[(1, 5), (9, 3)])
    assert result.parity is not None and result.parity.passed and result.parity.max_abs_diff < 1e-5


def test_user_vectors_come_from_the_last_training_example_only(planted, tmp_path):
    split, _ = planted
    dm = CTRDataModule.from_split(split)
    signals = TeacherSignals(_cache(split, tmp_path / "signals", every_position=True))
    train = dm.examples["train"]
    spec = KnowledgeSpec.parse({"user_signal": "user", "item_signal": None})
    items = np.zeros(len(train), dtype=np.int64)
    tables = build_knowledge_tables(signals, train.user, train.pos, items, split.num_users, spec)
    last_train = np.array([train.pos[train.user == u].max() for u in range(split.num_users)])
    held_out = np.concatenate([dm.examples["valid"].pos, dm.examples["test"].pos])
    assert held_out.max() > last_train.max()  # the cache has later (valid/test) rows the builder could pick
    assert (tables.user_example_ids == np.arange(split.num_users) * EXAMPLE_STRIDE + last_train).all()
    # the stored vector is that row's (projected) state, not the one of a later, held-out event
    raw, _ = signals.lookup(tables.user_example_ids, ("user",))
    later, found = signals.lookup(tables.user_example_ids + 1, ("user",))
    assert bool(found.all())
    torch.testing.assert_close(tables.user_vectors[1:], tables.user_projection(raw["user"].float()))
    assert not torch.allclose(tables.user_vectors[1:], tables.user_projection(later["user"].float()))
    # a user without any covered training row gets zeros and known = 0
    keep = train.user != 3
    tables = build_knowledge_tables(signals, train.user[keep], train.pos[keep], items[keep], split.num_users, spec)
    assert tables.user_known[4] == 0 and float(tables.user_vectors[4].abs().sum()) == 0 and tables.user_known[1] == 1


def test_knowledge_features_beat_the_same_student_without_them_on_unseen_items(planted, tmp_path):
    split, attribute = planted
    dm = CTRDataModule.from_split(split, batch_size=128)
    kar = _kar_module(dm, _cache(split, tmp_path / "signals", attribute))
    _trainer(6).fit(kar, datamodule=dm)
    torch.manual_seed(0)
    plain = CTRRecommender(build_student("deepfm", field_dims=dm.field_dims, dense_dim=dm.dense_dim,
                                         num_items=dm.num_items, **DEEPFM), lr=1e-2)
    _trainer(6).fit(plain, datamodule=dm)
    kar_auc, plain_auc = _test_auc(kar.student, dm), _test_auc(plain.student, dm)
    assert kar_auc > 0.8 and kar_auc > plain_auc + 0.2, (kar_auc, plain_auc)


def test_options_are_checked_and_the_recipe_parses():
    from recdistill.recipes import recipe_path
    from recdistill.student.fit import read_recipe, student_task

    with pytest.raises(ValueError, match="unknown option"):
        KnowledgeSpec.parse({"adapter_dims": 8})
    with pytest.raises(ValueError, match="user_signal"):
        KnowledgeSpec.parse({"user_signal": "topk_items"})
    with pytest.raises(ValueError, match="one width"):
        build_student("kar", field_dims=[4, 5], user_vector_dim=3, item_vector_dim=2, interaction=True)
    with pytest.raises(ValueError, match="backbone_args must not set"):
        build_student("kar", field_dims=[4, 5], item_vector_dim=2, backbone_args={"dense_dim": 3})
    for name in ("ml100k_deepfm_kar", "ml100k_din_kar", "ml100k_dcnv2_kar"):
        recipe = read_recipe(recipe_path(name))
        assert student_task(recipe) == "ctr", name
        spec = KnowledgeSpec.parse(recipe["model"]["knowledge_features"])
        assert spec.item_signal == "score_items" and spec.user_signal is None and not spec.use_interaction()


def test_example_mode_trains_on_each_rows_own_pre_event_state_and_serves_the_table(planted, tmp_path):
    """``train_user_vectors: example``: a training row reads the teacher's state before its own event
    (no train/serve skew from a state that has already read the row's item); serving reads the table."""
    from recdistill.distill.knowledge_features import row_user_vectors

    split, attribute = planted
    dm = CTRDataModule.from_split(split, batch_size=128)
    module = _kar_module(dm, _cache(split, tmp_path / "signals", attribute), train_user_vectors="example")
    _trainer(1).fit(module, datamodule=dm)
    assert module._user_projection is not None and module.knowledge_info["users_known"] == split.num_users
    batch = next(iter(dm.dataloader("train")))
    module.eval()
    with torch.no_grad():
        out = module.task_loss(batch)
        users, known = row_user_vectors(module.signals, batch["example_id"], module.knowledge, module._user_projection)
        raw, valid = module.signals.lookup(batch["example_id"], ("score_user",))
        student = module.student
        table_rows = student.user_vectors[batch["sparse"][:, student.user_field]]
        served = student(batch["sparse"], batch["dense"], batch["history"])
    torch.testing.assert_close(users[valid], module._user_projection(raw["score_user"][valid]))
    assert torch.equal(known.bool(), valid) and float(users[~valid].abs().sum()) == 0
    assert not torch.allclose(users[valid], table_rows[valid])  # not the served (last-state) row ...
    assert not torch.allclose(out.logits, served)  # ... so training and serving logits differ on these rows
