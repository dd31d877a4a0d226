"""Recipe terms: parsing errors name the field, each loss is fed the right context entries."""

from __future__ import annotations

import pytest
import torch

from recdistill.distill import DISTILL_LOSSES
from recdistill.distill.terms import (
    CONTEXT_KEYS, TEACHER_SIGNALS, DistillTerm, TermConfigError, TermSpec, declared_inputs, teacher_dims_for,
)


@pytest.mark.parametrize("entry, message", [
    ({"name": "nope"}, "model.terms[0].name='nope' is not a distillation loss"),
    ({"name": "rd", "weight": -1}, "model.terms[0].weight must be a number >= 0"),
    ({"name": "rd", "wieght": 1}, "unknown key(s) ['wieght']"),
    ({"name": "rd", "top_k": 0}, "model.terms[0].top_k must be a positive integer"),
    ("rd", "must be a mapping"),
])
def test_bad_term_entries_name_the_field(entry, message):
    with pytest.raises(TermConfigError) as err:
        TermSpec.parse(entry, 0)
    assert message in str(err.value)


def test_every_registered_loss_declares_known_context_keys():
    defaults = {"soft_kl": {}, "ctr_soft_bce": {}}
    for name, cls in DISTILL_LOSSES.items():
        inputs = declared_inputs(cls, defaults.get(name, {}))
        assert inputs, name
        assert set(inputs.values()) <= CONTEXT_KEYS, name


def test_declared_inputs_follow_params():
    dllm = DISTILL_LOSSES["dllm2rec"]
    assert set(declared_inputs(dllm, {"gamma": [1, 0, 0]}).values()) == {"student_logits", "teacher_topk_ids"}
    assert "target" in declared_inputs(dllm, {}).values()
    assert "target" not in declared_inputs(dllm, {"confidence": "item"}).values()
    kl = DISTILL_LOSSES["soft_kl"]
    assert set(declared_inputs(kl, {}).values()) == {"student_logits", "teacher_soft_targets"}
    assert "teacher_target_score" in declared_inputs(kl, {"source": "topk_target"}).values()
    with pytest.raises(ValueError, match="source must be one of"):
        declared_inputs(kl, {"source": "all"})


def test_term_fills_data_dependent_dims_and_maps_signals():
    spec = TermSpec.parse({"name": "multilayer", "weight": 0.5}, 0)
    inputs = declared_inputs(DISTILL_LOSSES["multilayer"], {})
    dims = {"student_dim": 8, "num_student_blocks": 2, **teacher_dims_for(inputs, {"layers": 12, "num_layers": 3})}
    term = DistillTerm(spec, dims)
    assert (term.loss.student_dim, term.loss.teacher_dim, term.loss.num_teacher_layers) == (8, 12, 3)
    assert term.teacher_signals == {"layers"}
    assert TEACHER_SIGNALS["teacher_topk_ids"] == "topk_items"


def test_top_k_truncates_the_teacher_list():
    torch.manual_seed(0)
    logits = torch.randn(3, 20, requires_grad=True)
    ids = torch.randint(1, 20, (3, 8))
    full = DistillTerm(TermSpec.parse({"name": "rd"}, 0), {})
    cut = DistillTerm(TermSpec.parse({"name": "rd", "top_k": 3}, 0), {})
    context = {"student_logits": logits, "teacher_topk_ids": ids}
    expected = full.loss(logits, ids[:, :3])
    assert torch.allclose(cut(context), expected)
    assert not torch.allclose(full(context), expected)


def test_bad_params_are_reported_with_the_term_label():
    with pytest.raises(TermConfigError, match="distillation term 'rd'.*lam must be > 0"):
        DistillTerm(TermSpec.parse({"name": "rd", "params": {"lam": 0}}, 0), {})


def test_packaged_distillation_recipes_name_valid_terms_for_their_task():
    from pathlib import Path

    import yaml

    from recdistill.distill.ctr_module import CTR_CONTEXT
    from recdistill.student.fit import student_task

    recipes = sorted(Path(__file__).parents[1].joinpath("recipes").glob("ml100k_*_d*.yaml"))
    recipes = [r for r in recipes if "distill" in r.stem or "dllm2rec" in r.stem]
    assert len(recipes) >= 7
    for path in recipes:
        config = yaml.safe_load(path.read_text())
        terms = [TermSpec.parse(entry, i) for i, entry in enumerate(config["model"]["terms"])]
        assert terms and config["model"]["signals"], path.name
        if student_task(config) == "ctr":
            for term in terms:
                assert set(declared_inputs(DISTILL_LOSSES[term.name], term.params).values()) <= CTR_CONTEXT, path.name
