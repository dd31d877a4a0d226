"""Students follow the contract of student/base.py: shapes, causality, padding, registry, learnability."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recdistill.student import STUDENTS, UnknownStudentError, build_student
from recdistill.student.io import load_student, save_student

N = 12  # catalogue size: items 1..N, 0 = padding
FIELD_DIMS = [4, N + 1, 3]  # field 1 is the item field (history index space)
DENSE = 2

SEQ_KWARGS: dict[str, dict[str, Any]] = {
    "sasrec": dict(num_items=N, hidden_size=16, num_layers=2, num_heads=2, max_len=10),
    "gru4rec": dict(num_items=N, hidden_size=16, num_layers=2, gru_size=12),
    "caser": dict(num_items=N, hidden_size=16, window=3, num_horizontal=4, num_vertical=2),
    "bert4rec": dict(num_items=N, hidden_size=16, num_layers=2, num_heads=2, max_len=10),
}
CTR_KWARGS: dict[str, dict[str, Any]] = {
    "deepfm": dict(field_dims=FIELD_DIMS, dense_dim=DENSE, embed_dim=8, mlp_dims=(16, 8)),
    "dcnv2": dict(field_dims=FIELD_DIMS, dense_dim=DENSE, embed_dim=8, num_cross_layers=2, mlp_dims=(16, 8)),
    "din": dict(field_dims=FIELD_DIMS, dense_dim=DENSE, num_items=N, embed_dim=8, attention_dims=(8,), mlp_dims=(16, 8)),
    "kar": dict(field_dims=FIELD_DIMS, dense_dim=DENSE, backbone="deepfm",
                backbone_args={"embed_dim": 8, "mlp_dims": [16, 8], "dropout": 0.0},
                user_vector_dim=4, item_vector_dim=4, adapter_dim=3, interaction=True, item_field=1),
}
CTR_VARIANTS = [(name, kw) for name, kw in CTR_KWARGS.items()] + [
    ("dcnv2", {**CTR_KWARGS["dcnv2"], "structure": "parallel"}),
    ("deepfm", dict(field_dims=FIELD_DIMS, embed_dim=8, mlp_dims=())),  # no dense, no MLP
]
CAUSAL = ["sasrec", "gru4rec", "caser"]


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Any:
    """Seeded, single-threaded: tiny ops gain nothing from threads and suffer on a busy machine."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seq_model(name: str) -> nn.Module:
    return build_student(name, **SEQ_KWARGS[name]).eval()


def left_padded(batch: int, length: int, pads: list[int] | None = None) -> torch.Tensor:
    """Random items with ``pads[b]`` leading zeros in row ``b``."""
    x = torch.randint(1, N + 1, (batch, length))
    for b, p in enumerate(pads or []):
        x[b, :p] = 0
    return x


def ctr_inputs(batch: int, history: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sparse = torch.stack([torch.randint(0, n, (batch,)) for n in FIELD_DIMS], dim=1)
    hist = left_padded(batch, history, [b % history for b in range(batch)])
    return sparse, torch.randn(batch, DENSE), hist


def test_every_registered_student_is_tested() -> None:
    assert set(STUDENTS) == set(SEQ_KWARGS) | set(CTR_KWARGS)


@pytest.mark.parametrize("name", SEQ_KWARGS)
@pytest.mark.parametrize("batch,length", [(1, 1), (1, 7), (3, 4), (4, 10)])
def test_sequential_contract(name: str, batch: int, length: int) -> None:
    model = seq_model(name)
    d = model.hidden_size
    x = left_padded(batch, length, [length // 2] * batch)
    enc = model.encode(x)
    assert enc.last.shape == (batch, d)
    assert enc.sequence is not None and enc.sequence.shape == (batch, length, d)
    assert len(enc.layers) >= 1 and all(h.shape[:2] == (batch, length) for h in enc.layers)
    assert model.num_items == N and model.objective in ("next_item", "cloze")
    logits = model(x)
    assert logits.shape == (batch, N + 1) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, model.score(enc.last))
    assert model.score(enc.sequence).shape == (batch, length, N + 1)
    torch.testing.assert_close(model(x), logits)  # deterministic in eval mode


@pytest.mark.parametrize("name", SEQ_KWARGS)
def test_fully_padded_rows_stay_finite(name: str) -> None:
    model = build_student(name, **SEQ_KWARGS[name])  # train mode: gradients too
    x = left_padded(2, 6, [6, 3])
    model.score(model.encode(x).sequence).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", CAUSAL)
def test_causal(name: str) -> None:
    model = seq_model(name)
    x = left_padded(3, 8, [0, 2, 5])
    seq = model.encode(x).sequence
    for t in range(7):
        changed = x.clone()
        changed[:, t + 1 :] = torch.randint(1, N + 1, (3, 7 - t))
        torch.testing.assert_close(model.encode(changed).sequence[:, : t + 1], seq[:, : t + 1])


def test_bert4rec_is_bidirectional() -> None:
    model = seq_model("bert4rec")
    x = left_padded(2, 6)
    changed = x.clone()
    changed[:, -1] = x[:, -1] % N + 1
    assert not torch.allclose(model.encode_masked(changed).sequence[:, 0], model.encode_masked(x).sequence[:, 0])


@pytest.mark.parametrize("name", CAUSAL + ["bert4rec"])
def test_left_padding_does_not_change_real_positions(name: str) -> None:
    model = seq_model(name)
    encode = model.encode_masked if name == "bert4rec" else model.encode
    lengths = [5, 2, 7, 1]
    x = left_padded(len(lengths), 7, [7 - n for n in lengths])
    enc = encode(x)
    for b, n in enumerate(lengths):
        alone = encode(x[b : b + 1, 7 - n :])  # the same items, no padding
        torch.testing.assert_close(enc.last[b : b + 1], alone.last, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(enc.sequence[b : b + 1, 7 - n :], alone.sequence, atol=1e-5, rtol=1e-5)


def test_bert4rec_mask_token() -> None:
    model = seq_model("bert4rec")
    assert model.mask_token == N + 1
    assert model.item_embedding.num_embeddings == N + 2
    x = left_padded(2, 6, [2, 0])
    masked = model.append_mask(x)
    assert masked.shape == x.shape and (masked[:, -1] == N + 1).all()
    assert torch.equal(masked[:, :-1], x[:, 1:])
    torch.testing.assert_close(model.encode(x).last, model.encode_masked(masked).sequence[:, -1])


@pytest.mark.parametrize("name,kwargs", CTR_VARIANTS)
@pytest.mark.parametrize("batch", [1, 5])
def test_ctr_contract(name: str, kwargs: dict[str, Any], batch: int) -> None:
    model = build_student(name, **kwargs).eval()
    assert model.objective == "ctr"
    sparse, dense, hist = ctr_inputs(batch)
    if not kwargs.get("dense_dim"):
        dense = dense[:, :0]
    logit = model(sparse, dense, hist)
    assert logit.shape == (batch,) and torch.isfinite(logit).all()
    enc = model.encode(sparse, dense, hist)
    assert enc.last.dim() == 2 and enc.last.shape[0] == batch
    assert all(h.dim() == 2 and h.shape[0] == batch for h in enc.layers)
    torch.testing.assert_close(model(sparse, dense, hist), logit)


def test_din_ignores_padded_history() -> None:
    model = build_student("din", **CTR_KWARGS["din"]).eval()
    with torch.no_grad():  # a non-zero padding row (e.g. a table loaded from a teacher) must not leak in
        model.item_embedding.weight[0] = torch.randn(model.item_embedding.embedding_dim)
    sparse, dense, hist = ctr_inputs(4)
    out = model(sparse, dense, hist)
    more_padding = torch.cat([torch.zeros(4, 3, dtype=torch.long), hist], dim=1)
    torch.testing.assert_close(model(sparse, dense, more_padding), out)
    hist_only_first = hist.clone()
    hist_only_first[:, 1:] = 0
    assert not torch.allclose(model(sparse, dense, hist_only_first), out)  # history is used


def test_din_item_field_must_use_history_index() -> None:
    with pytest.raises(ValueError, match="item field"):
        build_student("din", field_dims=[4, N + 5], num_items=N)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # nn.GRU's own input-size checks
@pytest.mark.parametrize("name,kwargs", [*[(n, k) for n, k in SEQ_KWARGS.items()], *CTR_VARIANTS[:3]])
def test_traced_graph_follows_input_shapes(name: str, kwargs: dict[str, Any]) -> None:
    """A trace taken at one shape gives the eager result at others: no shape baked in."""
    model = build_student(name, **kwargs).eval()
    if name in SEQ_KWARGS:
        traced = torch.jit.trace(model, (left_padded(3, 8, [0, 2, 8]),))
        for x in (left_padded(2, 5, [1, 0]), left_padded(1, 9, [4])):
            torch.testing.assert_close(traced(x), model(x))
    else:
        traced = torch.jit.trace(model, ctr_inputs(4))
        inputs = ctr_inputs(2, history=7)
        torch.testing.assert_close(traced(*inputs), model(*inputs))


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_save_load_round_trip(name: str, tmp_path: Any) -> None:
    kwargs = SEQ_KWARGS.get(name) or CTR_KWARGS[name]
    model = build_student(name, **kwargs).eval()
    inputs = (left_padded(2, 6, [3, 0]),) if name in SEQ_KWARGS else ctr_inputs(3)
    loaded = load_student(save_student(model, tmp_path / name))
    torch.testing.assert_close(loaded(*inputs), model(*inputs))


@pytest.mark.parametrize("name", ["sasrec", "kar"])
def test_sizes_given_as_numpy_scalars_save_and_load(name: str, tmp_path: Any) -> None:
    """Sizes read from arrays (``np.int64``) are recorded as plain numbers: the spec is written and rebuilds
    the same model (they used to make ``save_student`` fail with 'int64 is not JSON serializable')."""
    import numpy as np

    kwargs = SEQ_KWARGS.get(name) or CTR_KWARGS[name]
    numpy_kwargs = {k: np.int64(v) if isinstance(v, int) and not isinstance(v, bool) else v
                    for k, v in kwargs.items()}
    if name == "kar":
        numpy_kwargs["field_dims"] = list(np.asarray(FIELD_DIMS, dtype=np.int64))
        numpy_kwargs["backbone_args"] = {**kwargs["backbone_args"], "embed_dim": np.int64(8)}
    model = build_student(name, **numpy_kwargs).eval()
    loaded = load_student(save_student(model, tmp_path / name))
    assert loaded.init_args == model.init_args == build_student(name, **kwargs).init_args
    inputs = (left_padded(2, 6, [3, 0]),) if name in SEQ_KWARGS else ctr_inputs(3)
    torch.testing.assert_close(loaded(*inputs), model(*inputs))


def test_build_student_errors() -> None:
    with pytest.raises(UnknownStudentError, match="known students: .*sasrec"):
        build_student("sasrek", num_items=3)
    with pytest.raises(KeyError):
        build_student("sasrek", num_items=3)
    with pytest.raises(TypeError, match="'hidden'"):
        build_student("sasrec", num_items=3, hidden=8)
    with pytest.raises(TypeError, match="num_items"):
        build_student("gru4rec", hidden_size=8)
    with pytest.raises(ValueError, match="structure"):
        build_student("dcnv2", field_dims=[3], structure="diagonal")


# --- learnability on planted patterns --------------------------------------------------------


@pytest.mark.parametrize("name", SEQ_KWARGS)
def test_sequential_learns_successor_pattern(name: str) -> None:
    """Next item = current item + 1 (mod N): a few hundred Adam steps cut the loss well down."""
    model = build_student(name, **{**SEQ_KWARGS[name], "dropout": 0.0})
    starts = torch.randint(1, N + 1, (32, 1))
    items = (starts - 1 + torch.arange(7)) % N + 1
    items[::3, :2] = 0  # some left padding
    inputs, targets = items[:, :-1], items[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss_fn() -> torch.Tensor:
        if model.objective == "cloze":  # mask the last position and a random one, predict them
            masked, labels = inputs.clone(), torch.zeros_like(inputs)
            pick = torch.zeros_like(inputs, dtype=torch.bool)
            pick[:, -1] = True
            pick[torch.arange(32), torch.randint(0, inputs.size(1), (32,))] = True
            pick &= inputs != 0
            masked[pick], labels[pick] = model.mask_token, inputs[pick]
            logits = model.score(model.encode_masked(masked).sequence)
        else:
            logits, labels = model.score(model.encode(inputs).sequence), targets * (inputs != 0)
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=0)

    first = loss_fn().item()
    for _ in range(100):
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first


@pytest.mark.parametrize("name", CTR_KWARGS)
def test_ctr_learns_planted_label(name: str) -> None:
    """Label = parity of field 0 (for DIN: whether the candidate is in the history)."""
    model = build_student(name, **{**CTR_KWARGS[name], "dropout": 0.0})
    sparse, dense, hist = ctr_inputs(64)
    if name == "din":
        labels = (hist == sparse[:, 1:2]).any(dim=1).float()
    else:
        labels = (sparse[:, 0] % 2).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = F.binary_cross_entropy_with_logits(model(sparse, dense, hist), labels).item()
    for _ in range(100):
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(sparse, dense, hist), labels)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first


# --- task_loss: everything a distillation module reuses ---------------------------------------


def _train_batch(tiny_split: Any, max_len: int = 8, windows: str = "all") -> dict[str, torch.Tensor]:
    from recdistill.data import SequentialDataModule

    module = SequentialDataModule.from_split(tiny_split, max_len=max_len, batch_size=64, train_windows=windows)
    return next(iter(module.dataloader("train")))


@pytest.mark.parametrize("name", CAUSAL)
def test_task_output_of_causal_students(name: str, tiny_split: Any) -> None:
    from recdistill.student.tasks import SequentialRecommender, TaskOutput

    batch = _train_batch(tiny_split)
    student = build_student(name, **{**SEQ_KWARGS[name], "num_items": tiny_split.num_items}).eval()
    out = SequentialRecommender(student).task_loss(batch)
    assert isinstance(out, TaskOutput)
    assert out.input_ids is batch["input_ids"]
    assert torch.equal(out.positions, batch["labels"] > 0)
    assert torch.equal(out.labels, batch["labels"][batch["labels"] > 0])
    assert torch.equal(out.example_ids, batch["example_ids"][out.positions])
    P = int(out.positions.sum())
    assert out.logits.shape == (P, tiny_split.num_items + 1) and out.labels.shape == (P,)
    with torch.no_grad():
        fresh = student.score(student.encode(batch["input_ids"]).sequence)[out.positions]
    torch.testing.assert_close(out.logits, fresh)
    torch.testing.assert_close(out.logits, student.score(out.encoded.sequence[out.positions]))
    torch.testing.assert_close(out.loss, F.cross_entropy(fresh, out.labels))
    assert len(out.encoded.layers) == student.num_layers + 1


def test_task_output_of_bert4rec(tiny_split: Any) -> None:
    from recdistill.data.schema import EXAMPLE_STRIDE
    from recdistill.student.tasks import SequentialRecommender

    batch = _train_batch(tiny_split, max_len=8)
    kwargs = {**SEQ_KWARGS["bert4rec"], "num_items": tiny_split.num_items, "max_len": 9}  # L + 1
    student = build_student("bert4rec", **kwargs).eval()
    out = SequentialRecommender(student).task_loss(batch)
    window = torch.cat([batch["input_ids"], batch["labels"][:, -1:]], dim=1)  # every item of the window
    assert out.input_ids.shape == out.positions.shape == window.shape
    assert torch.equal(out.input_ids[out.positions], torch.full_like(out.labels, student.mask_token))
    assert torch.equal(out.input_ids[~out.positions], window[~out.positions])
    assert torch.equal(out.labels, window[out.positions]) and (out.labels > 0).all()
    assert out.positions.any(dim=1).all()  # at least one target per row
    with torch.no_grad():
        fresh = student.score(student.encode_masked(out.input_ids).sequence)[out.positions]
    torch.testing.assert_close(out.logits, fresh)
    torch.testing.assert_close(out.loss, F.cross_entropy(fresh, out.labels))
    # example ids name the item at each masked position: user * STRIDE + its position in the sequence
    users, pos = out.example_ids // EXAMPLE_STRIDE, out.example_ids % EXAMPLE_STRIDE
    for user, p, item, eid in zip(users.tolist(), pos.tolist(), out.labels.tolist(), out.example_ids.tolist()):
        if eid == -1:
            continue
        assert p >= 1 and int(tiny_split.sequences[user][p]) == item


def test_bert4rec_first_item_can_be_a_target() -> None:
    """Issue 11: the cloze window is built from the whole sequence, not from the labels, so the
    first item of a sequence is maskable (and, at position 0, has no example id)."""
    from recdistill.student.tasks import SequentialRecommender

    # user 3 with sequence [5, 6, 7, 8]: inputs [5, 6, 7] -> labels [6, 7, 8], left-padded to L = 5
    stride = 1 << 20
    batch = {"input_ids": torch.tensor([[0, 0, 5, 6, 7]]), "labels": torch.tensor([[0, 0, 6, 7, 8]]),
             "example_ids": torch.tensor([[0, 0, 3 * stride + 1, 3 * stride + 2, 3 * stride + 3]])}
    student = build_student("bert4rec", **{**SEQ_KWARGS["bert4rec"], "mask_prob": 1.0}).eval()
    out = SequentialRecommender(student).task_loss(batch)  # max_len 10 >= L + 1: the whole window
    assert out.labels.tolist() == [5, 6, 7, 8]
    assert out.example_ids.tolist() == [-1, 3 * stride + 1, 3 * stride + 2, 3 * stride + 3]
    assert out.input_ids.tolist() == [[0, 0] + [student.mask_token] * 4]

    student = build_student("bert4rec", **{**SEQ_KWARGS["bert4rec"], "max_len": 5, "mask_prob": 0.5})
    module = SequentialRecommender(student)
    seen = torch.zeros(N + 1)
    for _ in range(200):  # the window is cut to max_len = 5 by dropping a padding position only
        out = module.task_loss(batch)
        assert out.input_ids.shape == (1, 5)
        seen.index_add_(0, out.labels, torch.ones(len(out.labels)))
    assert 60 < seen[5] < 140 and all(seen[i] > 60 for i in (6, 7, 8))  # ~half the draws each


@pytest.mark.parametrize("name,kwargs", CTR_VARIANTS)
def test_ctr_task_output(name: str, kwargs: dict[str, Any]) -> None:
    from recdistill.student.tasks import CTRRecommender, CTRTaskOutput

    model = build_student(name, **kwargs).eval()
    sparse, dense, hist = ctr_inputs(6)
    dense = dense[:, : kwargs.get("dense_dim", 0)]
    batch = {"sparse": sparse, "dense": dense, "history": hist, "label": torch.tensor([0, 1, 1, 0, 1, 0.0])}
    out = CTRRecommender(model).task_loss(batch)
    assert isinstance(out, CTRTaskOutput)
    torch.testing.assert_close(out.logits, model(sparse, dense, hist))
    torch.testing.assert_close(out.loss, F.binary_cross_entropy_with_logits(out.logits, batch["label"]))
    assert out.encoded.layers[-1] is out.encoded.last
