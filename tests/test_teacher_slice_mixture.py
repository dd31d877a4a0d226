"""The teacher's slice mixture: a probability law per user, chosen on validation, one dot product in the cache."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from recdistill.teacher.slice_mixture import apply_slice_mixture, check_grid, choose_slice_mixture, content_slice

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def test_mixture_is_a_law_with_share_pi_on_the_content_slice_and_keeps_each_slices_order():
    torch.manual_seed(0)
    logits = torch.randn(4, 13) * 3
    counts = torch.tensor([0, 0, 0, 2, 7, 30, 50, 0, 12, 3, 90, 1, 40])
    content = content_slice(counts, 4)  # items 1..12 with < 4 interactions; never item 0
    assert not content[0] and content.tolist()[1:] == [c < 4 for c in counts.tolist()[1:]]
    out = apply_slice_mixture(logits, content, tau=2.0, pi=0.3)
    assert torch.isinf(out[:, 0]).all()
    p = out[:, 1:].exp()
    assert torch.allclose(p.sum(1), torch.ones(4), atol=1e-6)
    assert torch.allclose(p[:, content[1:]].sum(1), torch.full((4,), 0.3), atol=1e-6)
    # brute force: each slice's softmax (content tempered) times its share
    c_idx, w_idx = content.nonzero().flatten(), (~content).nonzero().flatten()[1:]
    want_c = 0.3 * torch.softmax(logits[:, c_idx] / 2.0, 1)
    want_w = 0.7 * torch.softmax(logits[:, w_idx], 1)
    assert torch.allclose(p[:, c_idx - 1], want_c, atol=1e-6)
    assert torch.allclose(p[:, w_idx - 1], want_w, atol=1e-6)


def test_grid_errors_name_the_field():
    assert check_grid(True)["pis"] and check_grid({"taus": [2]})["taus"] == [2.0]
    with pytest.raises(ValueError, match="pis"):
        check_grid({"pis": [0.0, 0.5]})
    with pytest.raises(ValueError, match="max_counts"):
        check_grid({"max_counts": [0.5]})
    with pytest.raises(ValueError, match="unknown key"):
        check_grid({"tau": [1]})
    with pytest.raises(ValueError, match="true or a mapping"):
        check_grid("yes")


class _FixedTeacher(torch.nn.Module):
    """Logits looked up by the user id in ``input_ids[:, -1]``: a teacher whose content scores rank cold
    items right but on a scale that never lets them into the top 10 of the fused list."""

    def __init__(self, logits: torch.Tensor, counts: torch.Tensor) -> None:
        super().__init__()
        self.table = logits
        self.hparams = {"slice_mixture": {"max_counts": [1, 5], "taus": [0.05, 1.0], "pis": [0.1, 0.5]}}
        self.register_buffer("item_train_count", counts.float())
        self.register_buffer("mixture_max_count", torch.tensor(1.0))
        self.register_buffer("mixture_tau", torch.tensor(1.0))
        self.register_buffer("mixture_pi", torch.tensor(math.nan))

    @property
    def device(self) -> torch.device:
        return self.item_train_count.device

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table[input_ids[:, -1]]


def _planted(num_users: int = 200, num_items: int = 40, seed: int = 0, cold_targets: bool = True):
    """Items 1..10 are cold (count 0), the rest warm; half the users' targets are cold. Warm logits rank a
    warm target first; the cold target's logit is the highest among cold items but far below the warm ones."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.cat([torch.zeros(11), torch.full((num_items - 10,), 50.0)])
    counts[0] = 0
    logits = torch.randn(num_users, num_items + 1, generator=g)
    targets = torch.empty(num_users, dtype=torch.long)
    for u in range(num_users):
        if u % 2 and cold_targets:
            targets[u] = 1 + int(torch.randint(0, 10, (1,), generator=g))
            logits[u, 1:11] -= 20.0
            logits[u, targets[u]] += 1.0  # right among the cold items, below every warm item
        else:
            targets[u] = 11 + int(torch.randint(0, num_items - 10, (1,), generator=g))
            logits[u, 1:11] -= 20.0
            logits[u, targets[u]] += 0.5
    batches = [{"input_ids": torch.arange(s, min(s + 64, num_users)).unsqueeze(1),
                "target": targets[s:s + 64], "history": torch.zeros(min(64, num_users - s), 1, dtype=torch.long)}
               for s in range(0, num_users, 64)]
    return _FixedTeacher(logits, counts), batches


def test_choice_is_the_grids_best_on_validation_and_is_kept_only_when_it_helps():
    from recdistill.metrics import RankingAccumulator

    teacher, batches = _planted()
    record = choose_slice_mixture(teacher, batches)
    assert record["chosen"] is not None and record["chosen"]["valid_ndcg@10"] > record["valid_ndcg@10_without"]
    best = max(record["grid"], key=lambda g: g["valid_ndcg@10"])
    assert record["chosen"]["valid_ndcg@10"] == pytest.approx(best["valid_ndcg@10"])
    assert (float(teacher.mixture_max_count), float(teacher.mixture_tau), float(teacher.mixture_pi)) == \
        pytest.approx((record["chosen"]["max_count"], record["chosen"]["tau"], record["chosen"]["pi"]))
    # every grid value equals a brute-force evaluation of that mixture
    point = record["grid"][3]
    acc = RankingAccumulator(ks=[10])
    for b in batches:
        content = content_slice(teacher.item_train_count, point["max_count"])
        acc.update(apply_slice_mixture(teacher(b["input_ids"]), content, point["tau"], point["pi"]), b["target"],
                   b["history"])
    assert acc.compute()["ndcg@10"] == pytest.approx(point["valid_ndcg@10"])
    # no target is cold: every mixture only pushes warm targets down, so none is kept
    right, batches = _planted(seed=1, cold_targets=False)
    assert choose_slice_mixture(right, batches)["chosen"] is None and math.isnan(float(right.mixture_pi))


def test_a_teacher_with_a_chosen_mixture_scores_it_and_the_cache_rebuilds_it(tmp_path):
    from recdistill.data import SequentialDataModule, build_sequential_split, planted_text_interactions
    from recdistill.student import SASRec
    from recdistill.teacher.cache_reader import TeacherSignals
    from recdistill.teacher.hllm import HLLMTeacher
    from recdistill.teacher.signals import emit_signals
    from recdistill.teacher.testing import make_tiny_llama

    split = build_sequential_split(planted_text_interactions(120, 48, num_categories=3, seed=0))
    tiny = make_tiny_llama(tmp_path / "tiny", texts=split.item_text, vocab_size=80, hidden_size=16, num_layers=1)
    torch.manual_seed(1)
    cf = SASRec(num_items=split.num_items, hidden_size=8, num_layers=1, max_len=10).eval()
    counts = torch.as_tensor(split.item_train_counts())
    teacher = HLLMTeacher(num_items=split.num_items, item_text=split.item_text, base_model=str(tiny), num_layers=1,
                          embedding_cache_dir=str(tmp_path / "emb"), progress=False, item_table="fusion",
                          item_bias=True, cold_gate_count=5, item_train_counts=counts, collaborative_model=cf,
                          slice_mixture={"max_counts": [4]}).eval()
    x = torch.tensor([[0, 3, 4, 5], [6, 7, 8, 9]])
    with torch.no_grad():
        teacher.item_bias.normal_()
        teacher.fusion_alpha.fill_(0.3)
        fused = teacher(x)
        assert not teacher.mixture_active()  # nothing chosen yet: the fused logits
        teacher.mixture_max_count.fill_(4.0)
        teacher.mixture_tau.fill_(2.0)
        teacher.mixture_pi.fill_(0.4)
        mixed = teacher(x)
        content = content_slice(counts.float(), 4.0)
        assert torch.allclose(mixed, apply_slice_mixture(fused, content, 2.0, 0.4), atol=1e-5)
        user = teacher.encode(x)["user"][:, -1]
        rebuilt = teacher.score_factors(user) @ teacher.score_item_factors().t()
        assert torch.allclose(rebuilt[:, 1:], mixed[:, 1:], atol=1e-4)
        assert torch.allclose(teacher.score_items(user, 10, 30), mixed[:, 10:30], atol=1e-5)
        assert teacher.score_blocks()[-1]["name"] == "slice_mixture"
        teacher.train()
        assert torch.allclose(teacher.score_items(user), fused, atol=1e-5)  # training never mixes
        teacher.eval()
    dm = SequentialDataModule.from_split(split, max_len=10, batch_size=16, eval_batch_size=32)
    out = emit_signals(teacher, dm, tmp_path / "signals", splits=["test"], k=5, layers=[1])
    signals = TeacherSignals(out)
    ids = split.example_ids("test")[:8]
    logits, valid = signals.teacher_logits(ids)
    assert bool(valid.all())
    rows = [split.test_example(u) for u in range(len(ids))]  # example ids are user-major
    inputs = torch.zeros(len(rows), 10, dtype=torch.long)
    for r, ex in enumerate(rows):
        seq = torch.as_tensor(ex.input[-10:])
        inputs[r, 10 - len(seq):] = seq
    with torch.no_grad():
        want = teacher(inputs)
    assert torch.allclose(logits[:, 1:], want[:, 1:], atol=2e-2)  # fp16 cache


def test_fit_chooses_the_mixture_and_the_saved_teacher_keeps_it(tmp_path):
    import json

    import lightning as L

    from recdistill.data import SequentialDataModule, build_sequential_split, planted_text_interactions
    from recdistill.teacher.fit import fit_teacher
    from recdistill.teacher.hllm import HLLMTeacher, load_teacher
    from recdistill.teacher.testing import make_tiny_llama

    split = build_sequential_split(planted_text_interactions(160, 48, num_categories=3, seed=2))
    tiny = make_tiny_llama(tmp_path / "tiny", texts=split.item_text, vocab_size=80, hidden_size=16, num_layers=1)
    dm = SequentialDataModule.from_split(split, max_len=10, batch_size=32, eval_batch_size=64)
    torch.manual_seed(0)
    teacher = HLLMTeacher(num_items=split.num_items, item_text=split.item_text, base_model=str(tiny), num_layers=1,
                          embedding_cache_dir=str(tmp_path / "emb"), progress=False, item_table="fusion",
                          cold_gate_count=5, logq=1.0, item_train_counts=torch.as_tensor(split.item_train_counts()),
                          slice_mixture={"max_counts": [1, 4], "taus": [1.0, 3.0], "pis": [0.3, 0.6]})
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    path = fit_teacher(teacher, dm, trainer, tmp_path / "fit")
    record = json.loads((tmp_path / "fit" / "fit.json").read_text())["slice_mixture"]
    assert len(record["grid"]) == 2 * 2 * 2 or len(record["grid"]) == 2 * 2  # c0 = 1 needs a cold item
    chosen = record["chosen"]
    if chosen is None:
        assert math.isnan(float(teacher.mixture_pi))
    else:
        assert float(teacher.mixture_pi) == pytest.approx(chosen["pi"])
    loaded = load_teacher(path).eval()
    x = torch.tensor([[0, 3, 4, 5], [6, 7, 8, 9]])
    with torch.no_grad():
        assert torch.allclose(loaded(x), teacher.eval()(x), atol=1e-5)
    assert loaded.mixture_active() == teacher.mixture_active()
