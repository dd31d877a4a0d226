"""The distillation module: signals read by example id, partial coverage, set-up checks, folding."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch

from recdistill.data import SequentialDataModule
from recdistill.distill.module import DistilledSequentialRecommender
from recdistill.distill.registry import build_loss
from recdistill.student import build_student
from recdistill.teacher.hllm import HLLMTeacher
from recdistill.teacher.signals import emit_signals
from recdistill.teacher.testing import make_tiny_llama, planted_oracle_cache, planted_split

warnings.filterwarnings("ignore", ".*does not have many workers.*")
QUIET = {"enable_progress_bar": False}


@pytest.fixture(scope="module")
def split():
    return planted_split(num_users=40, num_items=25, mean_length=12, seed=2)


@pytest.fixture(scope="module")
def datamodule(split):
    return SequentialDataModule.from_split(split, max_len=8, batch_size=16, eval_batch_size=32)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, split):
    tiny = make_tiny_llama(tmp_path_factory.mktemp("tiny"), texts=split.item_text, num_layers=2)
    torch.manual_seed(0)
    t = HLLMTeacher(num_items=split.num_items, item_text=split.item_text, base_model=str(tiny), num_layers=2,
                    embedding_cache_dir=str(tmp_path_factory.mktemp("emb")), progress=False)
    return t.eval()


def _emit(teacher, datamodule, directory, **kwargs):
    settings = dict(k=6, layers=[1, 2], shard_size=64, batch_size=8, item_chunk_size=16, trainer_kwargs=QUIET)
    settings.update(kwargs)
    return emit_signals(teacher, datamodule, directory, **settings)


@pytest.fixture(scope="module")
def every_third(tmp_path_factory, teacher, datamodule):
    return _emit(teacher, datamodule, tmp_path_factory.mktemp("third") / "signals", train_every=3)


@pytest.fixture(scope="module")
def no_layers(tmp_path_factory, teacher, datamodule):
    return _emit(teacher, datamodule, tmp_path_factory.mktemp("nolayers") / "signals", layers=[])


def _student(split):
    torch.manual_seed(0)
    return build_student("sasrec", num_items=split.num_items, hidden_size=16, num_layers=2, num_heads=1,
                         dropout=0.0, max_len=8)


def _batch(datamodule):
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


def test_missing_signal_fails_at_setup_naming_it(split, no_layers):
    with pytest.raises(Exception) as err:
        DistilledSequentialRecommender(_student(split), signals=str(no_layers), num_items=split.num_items,
                                       terms=[{"name": "multilayer", "weight": 1.0}])
    assert "layers" in str(err.value) and "emit" in str(err.value)


def test_terms_average_over_covered_positions_only(split, datamodule, every_third):
    module = DistilledSequentialRecommender(_student(split), signals=str(every_third), num_items=split.num_items,
                                            terms=[{"name": "rd", "weight": 1.0}])
    batch = _batch(datamodule)
    logged: dict[str, float] = {}
    module.log = lambda name, value, **kw: logged.__setitem__(name, float(value.detach() if hasattr(value, "detach") else value))  # type: ignore[method-assign]
    torch.manual_seed(1)
    total = module.training_step(batch, 0)
    out = module.task_loss(batch)
    example_ids = batch["example_ids"][out.positions]
    found, valid = module.signals.lookup(example_ids, ["topk_items"])
    assert 0 < valid.float().mean() < 1  # every third position has a teacher row
    assert logged["distill/coverage"] == pytest.approx(float(valid.float().mean()))
    expected = build_loss("rd")(out.logits[valid], found["topk_items"][valid].long())
    assert logged["distill/rd"] == pytest.approx(float(expected), rel=1e-5)
    assert float(total) == pytest.approx(float(out.loss + expected), rel=1e-5)


def test_projectors_get_gradients_and_teacher_tensors_do_not(split, datamodule, every_third):
    module = DistilledSequentialRecommender(
        _student(split), signals=str(every_third), num_items=split.num_items,
        terms=[{"name": "hidden_state", "weight": 1.0}, {"name": "multilayer", "weight": 1.0}])
    module.log = lambda *a, **k: None  # type: ignore[method-assign]
    loss = module.training_step(_batch(datamodule), 0)
    loss.backward()
    for term in module.terms:
        grads = [p.grad for p in term.parameters()]
        assert grads and all(g is not None and g.abs().sum() > 0 for g in grads), term.label
    assert module.student.item_embedding.weight.grad is not None


def test_embedding_fusion_folds_into_a_plain_student_with_equal_scores(split, every_third, tmp_path):
    from recdistill.student.io import load_student, save_student

    module = DistilledSequentialRecommender(_student(split), signals=str(every_third), num_items=split.num_items,
                                            terms=[], embedding_fusion={"w_ed": 0.25})
    with torch.no_grad():
        module.student.item_embedding.g.weight.normal_(0, 0.5)
    module.eval()
    plain = module.plain_student()
    assert isinstance(plain.item_embedding, torch.nn.Embedding)
    save_student(plain, tmp_path / "student")
    reloaded = load_student(tmp_path / "student")
    x = torch.tensor([[0, 0, 3, 5, 7, 1, 2, 9], [4, 4, 4, 4, 4, 4, 4, 4]])
    with torch.no_grad():
        assert torch.allclose(module.student(x), reloaded(x), atol=1e-5)
    assert not any("teacher" in k or ".g." in k for k in reloaded.state_dict())


def test_pca_init_places_teacher_geometry_in_the_item_table(split, every_third):
    module = DistilledSequentialRecommender(_student(split), signals=str(every_third), num_items=split.num_items,
                                            terms=[], item_embedding_init="pca")
    table = module.student.item_embedding.weight.detach()[1:]
    teacher = module.teacher_item_table[1:]
    # inner products of the student rows follow the teacher's (rank-16 PCA of a wider table)
    s = torch.corrcoef(torch.stack([(table @ table.T).flatten(), (teacher @ teacher.T).flatten()]))[0, 1]
    assert s > 0.5


def test_cache_from_another_dataset_is_refused(split, every_third):
    other = planted_split(num_users=40, num_items=25, mean_length=12, seed=3)
    dm = SequentialDataModule.from_split(other, max_len=8, batch_size=16)
    module = DistilledSequentialRecommender(_student(split), signals=str(every_third), num_items=split.num_items,
                                            terms=[{"name": "rd"}])
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with pytest.raises(Exception, match="was emitted for dataset"):
        trainer.fit(module, datamodule=dm)


def test_distilled_student_beats_plain_student_when_the_teacher_knows_the_pattern(tmp_path):
    from recdistill.student.tasks import SequentialRecommender

    # few users and noisy labels (half follow the planted successor): the student alone sees too little
    small = planted_split(num_users=40, num_items=80, mean_length=14, seed=4, pattern_strength=0.5)
    cache = planted_oracle_cache(small, tmp_path / "signals", num_items=80, seed=4)

    def test_ndcg(distill: bool) -> float:
        L.seed_everything(0)
        dm = SequentialDataModule.from_split(small, max_len=10, batch_size=32)
        student = build_student("sasrec", num_items=small.num_items, hidden_size=16, num_layers=1, num_heads=1,
                                dropout=0.0, max_len=10)
        module = (DistilledSequentialRecommender(student, signals=str(cache), num_items=small.num_items, lr=5e-3,
                                                 terms=[{"name": "rd", "weight": 1.0}])
                  if distill else SequentialRecommender(student, lr=5e-3))
        trainer = L.Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, deterministic=True)
        trainer.fit(module, datamodule=dm)
        return trainer.test(module, datamodule=dm, verbose=False)[0]["test/ndcg@10"]

    plain, distilled = test_ndcg(False), test_ndcg(True)
    assert distilled > plain + 0.03, (plain, distilled)


@pytest.mark.parametrize("name, kwargs", [
    ("sasrec", dict(hidden_size=16, num_layers=2, num_heads=1, dropout=0.0, max_len=8)),
    ("gru4rec", dict(hidden_size=16, dropout=0.0)),
    # inner GRU blocks narrower than hidden_size (layer contract): multilayer projects each block from its width
    ("gru4rec", dict(hidden_size=16, num_layers=2, gru_size=12, dropout=0.0)),
    ("caser", dict(hidden_size=16, dropout=0.0)),
    ("bert4rec", dict(hidden_size=16, num_layers=2, num_heads=1, dropout=0.0, max_len=9)),
])
def test_every_sequential_student_distils_with_response_and_feature_terms(name, kwargs, split, datamodule,
                                                                         every_third):
    torch.manual_seed(0)
    student = build_student(name, num_items=split.num_items, **kwargs)
    module = DistilledSequentialRecommender(
        student, signals=str(every_third), num_items=split.num_items, embedding_fusion={"w_ed": 0.25},
        terms=[{"name": "dllm2rec", "params": {"student_output": "softmax", "distance": "cosine"}},
               {"name": "hidden_state", "weight": 0.1}, {"name": "multilayer", "weight": 0.1}])
    logged: dict[str, float] = {}
    module.log = lambda key, value, **kw: logged.__setitem__(key, float(value.detach() if hasattr(value, "detach") else value))  # type: ignore[method-assign]
    loss = module.training_step(_batch(datamodule), 0)
    loss.backward()
    assert torch.isfinite(loss) and 0 < logged["distill/coverage"] < 1
    assert all(logged[f"distill/{t}"] > 0 for t in ("dllm2rec", "hidden_state", "multilayer"))
    x = torch.tensor([[0, 0, 3, 5, 7, 1, 2, 9]])
    module.eval()
    with torch.no_grad():
        assert torch.allclose(module.student(x), module.plain_student()(x), atol=1e-5)


def test_distilled_evaluation_reports_the_cold_rare_warm_slices(split, datamodule, every_third):
    module = DistilledSequentialRecommender(_student(split), signals=str(every_third), num_items=split.num_items,
                                            terms=[{"name": "rd"}])
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_train_batches=1)
    trainer.fit(module, datamodule=datamodule)
    test = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    counts = [test[f"test/{s}/count"] for s in ("cold", "rare", "warm")]
    assert sum(counts) == split.num_users


def test_teacher_logits_kept_in_memory_equal_the_rebuilt_ones(split, datamodule, every_third):
    terms = [{"name": "soft_kl", "weight": 1.0, "params": {"temperature": 2.0, "source": "full"}}]
    kept = DistilledSequentialRecommender(_student(split), signals=str(every_third), num_items=split.num_items,
                                          terms=terms)
    fresh = DistilledSequentialRecommender(_student(split), signals=str(every_third), num_items=split.num_items,
                                           terms=terms, teacher_logits_memory=0)
    ids = torch.as_tensor(kept.signals.example_ids()[[5, 1, 9, 1]])
    first = kept._teacher_logits(ids)
    assert int(kept._memories["logits"].filled.sum()) == 3  # three distinct examples rebuilt once, then read
    assert torch.equal(kept._teacher_logits(ids), first) and torch.equal(first, fresh._teacher_logits(ids))
    batch = _batch(datamodule)
    for module in (kept, fresh):
        module.log = lambda *a, **k: None  # type: ignore[method-assign]
    losses = [float(kept.training_step(batch, 0)), float(kept.training_step(batch, 0)),
              float(fresh.training_step(batch, 0))]
    assert losses[0] == losses[1] == pytest.approx(losses[2], rel=1e-6)
    # the KL reads soft targets prepared once per row at its temperature; none kept without a budget
    assert int(kept._memories[("soft", 2.0)].filled.sum()) > 0 and fresh._memories[("soft", 2.0)] is None


def test_a_cache_without_training_rows_fails_loudly_instead_of_training_without_distillation(split, datamodule,
                                                                                            every_third, tmp_path):
    """A cache emitted without the training split (``--emit.splits [valid, test]``) covers no training
    position: every term used to add 0 for the whole fit, silently a plain student."""
    from recdistill.data import EXAMPLE_STRIDE
    from recdistill.errors import user_message
    from recdistill.teacher.cache_format import MissingSignalError
    from recdistill.teacher.cache_writer import write_cache

    # validation targets only (index len - 2 of each user's sequence); training labels are at 1..len - 3
    ids = torch.tensor([u * EXAMPLE_STRIDE + len(seq) - 2 for u, seq in enumerate(split.sequences)])
    top = torch.randint(1, split.num_items + 1, (len(ids), 5), generator=torch.Generator().manual_seed(0))
    cache = write_cache(tmp_path / "valid_only", {"valid": {"example_id": ids, "topk_items": top.int()}}, split=split,
                        item_tables={"item_embeddings": torch.randn(split.num_items + 1, 4)}, teacher={"kind": "test"})

    def fit(signals):
        module = DistilledSequentialRecommender(_student(split), signals=str(signals), num_items=split.num_items,
                                                terms=[{"name": "rd"}])
        trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0)
        trainer.fit(module, datamodule=datamodule)

    with pytest.raises(MissingSignalError, match="no training example .* emit the teacher on the training split") as err:
        fit(cache)
    assert str(tmp_path / "valid_only") in str(err.value) and user_message(err.value) is not None
    fit(every_third)  # partial coverage (one position in three) is fine
