"""Structured pruning: every student shrinks, keeps its output shape, re-syncs its attributes and
round-trips through save_student/load_student; channels with zero weights are the ones removed."""

from __future__ import annotations

import json

import pytest
import torch

from recdistill.compress.prune import PruningError, count_params, probe_inputs, prune_student
from recdistill.student import build_student
from recdistill.student.io import load_student, save_student

CONFIGS = {
    "sasrec": dict(num_items=30, hidden_size=32, num_layers=2, num_heads=2, max_len=10),
    "bert4rec": dict(num_items=30, hidden_size=32, num_layers=2, num_heads=2, max_len=10),
    "caser": dict(num_items=30, hidden_size=16, window=3, num_horizontal=8, num_vertical=4),
    "gru4rec": dict(num_items=30, hidden_size=16, num_layers=2, gru_size=24),
    "deepfm": dict(field_dims=[5, 7], dense_dim=2, embed_dim=8, mlp_dims=[32, 16]),
    "dcnv2": dict(field_dims=[5, 7], dense_dim=2, embed_dim=8, mlp_dims=[32, 16], structure="parallel"),
    "din": dict(field_dims=[5, 31, 7], dense_dim=2, num_items=30, embed_dim=8, attention_dims=[16, 8],
                mlp_dims=[32, 16]),
    "kar": dict(field_dims=[5, 31, 7], dense_dim=2, num_items=30, backbone="din", user_vector_dim=4,
                item_vector_dim=4, interaction=True,
                backbone_args=dict(embed_dim=8, attention_dims=[16, 8], mlp_dims=[32, 16])),
}


def _student(name: str, **extra):
    torch.manual_seed(0)
    model = build_student(name, dropout=0.0, **{**CONFIGS[name], **extra}).eval()
    if name == "kar":  # teacher tables as a fitted KAR student holds them
        model.set_knowledge(torch.randn_like(model.user_vectors), torch.ones_like(model.user_known),
                            torch.randn_like(model.item_vectors), (0.5, 2.0))
    return model


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pruned_student_shrinks_runs_and_round_trips(name, tmp_path):
    parent = _student(name)
    pruned, report = prune_student(parent, 0.5)
    inputs = probe_inputs(parent, batch=4, length=6, seed=1)
    with torch.no_grad():
        assert pruned(*inputs).shape == parent(*inputs).shape
    assert report.params_before == count_params(parent)
    assert report.params_after == count_params(pruned) < report.params_before
    assert report.pruned, report
    assert count_params(parent) == report.params_before  # the parent is untouched
    save_student(pruned, tmp_path)
    spec = json.loads((tmp_path / "student.json").read_text())
    assert spec["init_args"] == report.init_args_after
    loaded = load_student(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs), pruned(*inputs))


@pytest.mark.parametrize("name", ["sasrec", "bert4rec"])
@pytest.mark.parametrize("attention", ["head_dims", "heads"])
def test_transformer_attributes_resync(name, attention):
    parent = _student(name)
    pruned, report = prune_student(parent, 0.5, attention=attention)
    args = report.init_args_after
    assert args["hidden_size"] == 16 and pruned.hidden_size == 16
    assert args["ffn_size"] == (16 if name == "sasrec" else 64)
    expected_heads = 2 if attention == "head_dims" else 1
    for block in pruned.blocks:
        att = block.attention
        assert att.num_heads == args["num_heads"] == expected_heads
        assert att.num_heads * att.head_dim == att.query.out_features == pruned.item_embedding.embedding_dim == 16
        assert block.ffn[0].out_features == args["ffn_size"]
    # widths and the item table shrink by the ratio: between (1-r)^2 and (1-r) of the parameters
    assert 0.25 * 0.9 < report.param_ratio <= 0.5 + 0.05


def test_zero_ratio_keeps_the_outputs():
    parent = _student("sasrec")
    pruned, report = prune_student(parent, 0.0)
    x = probe_inputs(parent)
    torch.testing.assert_close(pruned(*x), parent(*x))
    assert report.params_after == report.params_before


def _zero_ffn_units(model):
    with torch.no_grad():
        for block in model.blocks:
            n = block.ffn[0].out_features
            block.ffn[0].weight[n // 2:] = 0
            block.ffn[0].bias[n // 2:] = 0
            block.ffn[3].weight[:, n // 2:] = 0


def test_dead_ffn_units_are_the_ones_removed():
    """Units with all-zero weights contribute nothing; pruning exactly those leaves the outputs unchanged."""
    parent = _student("sasrec")
    _zero_ffn_units(parent)
    pruned, report = prune_student(parent, 0.5, prune_hidden=False)
    assert report.init_args_after["ffn_size"] == 16 and report.init_args_after["hidden_size"] == 32
    assert "hidden" in report.not_pruned
    x = probe_inputs(parent, batch=5, length=10)
    torch.testing.assert_close(pruned(*x), parent(*x))


def test_dead_mlp_units_are_the_ones_removed():
    parent = _student("deepfm")
    with torch.no_grad():
        for i, block in enumerate(parent.mlp.blocks):
            n = block[0].out_features
            block[0].weight[n // 2:] = 0
            block[0].bias[n // 2:] = 0
    pruned, report = prune_student(parent, 0.5)
    assert report.init_args_after["mlp_dims"] == [16, 8]
    x = probe_inputs(parent, batch=6)
    torch.testing.assert_close(pruned(*x), parent(*x))


def test_dead_gru_units_are_the_ones_removed():
    """A GRU unit with zero weights and biases stays at 0 from a zero state, so removing it is exact."""
    parent = _student("gru4rec")
    with torch.no_grad():
        for gru in parent.grus:
            H = gru.hidden_size
            for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
                p = getattr(gru, name)
                for g in range(3):
                    p[g * H + H // 2: (g + 1) * H] = 0
    pruned, report = prune_student(parent, 0.5, prune_hidden=False)
    assert report.init_args_after["gru_size"] == 12
    assert any("torch-pruning cannot" in p for p in report.pruned)
    x = probe_inputs(parent, batch=4, length=7)
    torch.testing.assert_close(pruned(*x), parent(*x))


def test_dead_caser_filters_are_the_ones_removed():
    parent = _student("caser")
    with torch.no_grad():
        for conv in [*parent.horizontal, parent.vertical]:
            conv.weight[conv.out_channels // 2:] = 0
            conv.bias[conv.out_channels // 2:] = 0
    pruned, report = prune_student(parent, 0.5, prune_hidden=False)
    assert (report.init_args_after["num_horizontal"], report.init_args_after["num_vertical"]) == (4, 2)
    assert "hidden_size" in report.not_pruned
    x = probe_inputs(parent, batch=4, length=7)
    torch.testing.assert_close(pruned(*x), parent(*x))


def test_dead_caser_widths_are_the_ones_removed():
    """Caser's hidden_size is two widths: item-table columns (read by the horizontal kernels and, per
    vertical channel, by fc) and fc outputs (read by the scoring layer). With the last half of each
    dead (the vertical filters' bias still flows through a dead column: fc's bias takes it over),
    pruning both to half is exact, and the channels removed are those."""
    parent = _student("caser")
    d = parent.hidden_size
    with torch.no_grad():
        parent.item_embedding.weight[:, d // 2:] = 0
        for conv in parent.horizontal:
            conv.weight[..., d // 2:] = 0
        parent.fc.weight[d // 2:] = 0
        parent.fc.bias[d // 2:] = 0
        # live but small: the norm criterion must still pick the dead half
        parent.item_embedding.weight[1:, : d // 2] += 0.01
    pruned, report = prune_student(parent, 0.5)
    args = report.init_args_after
    assert args["hidden_size"] == pruned.hidden_size == d // 2 == pruned.item_embedding.embedding_dim
    assert pruned.fc.out_features == pruned.output.in_features == d // 2
    assert pruned.fc.in_features == args["num_vertical"] * d // 2 + args["num_horizontal"] * args["window"]
    assert any(p.startswith("hidden_size") for p in report.pruned) and "hidden_size" not in report.not_pruned
    assert report.param_ratio < 0.5  # the item table and the scoring layer dominate Caser
    # channels kept are the live ones: with dead conv channels too the outputs would be unchanged
    dead = _student("caser")
    with torch.no_grad():
        dead.load_state_dict(parent.state_dict())
        for conv in [*dead.horizontal, dead.vertical]:
            conv.weight[conv.out_channels // 2:] = 0
            conv.bias[conv.out_channels // 2:] = 0
    exact, _ = prune_student(dead, 0.5)
    x = probe_inputs(dead, batch=4, length=7)
    torch.testing.assert_close(exact(*x), dead(*x))


def test_bad_arguments_fail_loudly():
    parent = _student("sasrec")
    with pytest.raises(ValueError):
        prune_student(parent, 1.0)
    with pytest.raises(ValueError):
        prune_student(parent, 0.5, attention="rows")
    with pytest.raises(PruningError):
        prune_student(torch.nn.Linear(2, 2), 0.5)


def test_recover_runs_for_a_cloze_student_and_leaves_the_parent_as_it_came(tiny_split):
    from recdistill.compress.recover import recover
    from recdistill.data.datamodules import SequentialDataModule

    dm = SequentialDataModule.from_split(tiny_split, max_len=10, batch_size=32)
    torch.manual_seed(0)
    parent = build_student("bert4rec", num_items=dm.num_items, hidden_size=16, num_layers=1, num_heads=2,
                           max_len=10, dropout=0.0)
    pruned, _ = prune_student(parent, 0.5)
    before = {k: v.clone() for k, v in pruned.state_dict().items()}
    history = recover(pruned, parent, dm.train_dataloader(), epochs=1, max_steps=2)
    assert history["steps"] == 2 and history["kd_loss"][0] > 0
    assert any(not torch.equal(before[k], v) for k, v in pruned.state_dict().items())
    assert all(p.requires_grad for p in parent.parameters())


def test_kar_prunes_its_backbone_and_keeps_the_teacher_tables():
    parent = _student("kar")
    pruned, report = prune_student(parent, 0.5)
    assert pruned.init_args["backbone_args"]["mlp_dims"] == [16, 8]
    assert pruned.init_args["backbone_args"]["attention_dims"] == [8, 4]
    assert pruned.init_args["backbone_args"]["embed_dim"] == 8
    for name in ("user_vectors", "user_known", "item_vectors", "interaction_norm"):
        torch.testing.assert_close(getattr(pruned, name), getattr(parent, name))
    for key, value in parent.adapter.state_dict().items():
        torch.testing.assert_close(pruned.adapter.state_dict()[key], value)
    assert "adapter" in report.not_pruned

