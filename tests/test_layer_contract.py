"""The layer contract of student/base.py, checked over the whole zoo (every registered student).

``Encoded.layers`` has ``num_layers + 1`` entries: the embedding output (exactly what the first
block reads), then each block's output, the final transform folded into the last entry, which
is what ``score`` reads. Widths are ``layer_widths``; sequential entries are aligned with the
tokens read; ``forward`` is computed from ``encode``.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch
from torch import nn

from recdistill.student import STUDENTS, build_student

N = 12
FIELD_DIMS = [4, N + 1, 3]  # field 1 = the item field (history index space) for DIN
DENSE = 2

SEQUENTIAL: list[tuple[str, dict[str, Any]]] = [
    ("sasrec", dict(num_items=N, hidden_size=16, num_layers=2, num_heads=2, max_len=10)),
    ("sasrec", dict(num_items=N, hidden_size=8, num_layers=1, num_heads=1, max_len=10)),
    ("gru4rec", dict(num_items=N, hidden_size=16, num_layers=1)),
    ("gru4rec", dict(num_items=N, hidden_size=16, num_layers=3, gru_size=12)),
    ("caser", dict(num_items=N, hidden_size=16, window=3, num_horizontal=4, num_vertical=2)),
    ("bert4rec", dict(num_items=N, hidden_size=16, num_layers=2, num_heads=2, max_len=10)),
]
CTR: list[tuple[str, dict[str, Any]]] = [
    ("deepfm", dict(field_dims=FIELD_DIMS, dense_dim=DENSE, embed_dim=8, mlp_dims=(16, 8))),
    ("deepfm", dict(field_dims=FIELD_DIMS, embed_dim=8, mlp_dims=())),
    ("dcnv2", dict(field_dims=FIELD_DIMS, dense_dim=DENSE, embed_dim=8, num_cross_layers=2, mlp_dims=(16, 8))),
    ("dcnv2", dict(field_dims=FIELD_DIMS, dense_dim=DENSE, embed_dim=8, num_cross_layers=2, mlp_dims=(16,),
                   structure="parallel")),
    ("dcnv2", dict(field_dims=FIELD_DIMS, embed_dim=8, num_cross_layers=0, mlp_dims=(16,), structure="parallel")),
    ("dcnv2", dict(field_dims=FIELD_DIMS, embed_dim=8, num_cross_layers=2, mlp_dims=())),
    ("din", dict(field_dims=FIELD_DIMS, dense_dim=DENSE, num_items=N, embed_dim=8, attention_dims=(8,),
                 mlp_dims=(16, 8))),
    ("kar", dict(field_dims=FIELD_DIMS, dense_dim=DENSE, backbone="dcnv2",
                 backbone_args={"embed_dim": 8, "num_cross_layers": 1, "mlp_dims": [16]},
                 user_vector_dim=4, item_vector_dim=3, adapter_dim=3)),
]
ZOO = SEQUENTIAL + CTR


def _id(case: tuple[str, dict[str, Any]]) -> str:
    name, kwargs = case
    extra = ",".join(f"{k}={v}" for k, v in kwargs.items() if k in ("num_layers", "gru_size", "structure",
                                                                       "mlp_dims", "num_cross_layers"))
    return f"{name}[{extra}]"


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Any:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def seq_inputs(batch: int = 3, length: int = 7, pads: tuple[int, ...] = (0, 2, 5)) -> torch.Tensor:
    x = torch.randint(1, N + 1, (batch, length))
    for b, p in enumerate(pads[:batch]):
        x[b, :p] = 0
    return x


def ctr_inputs(batch: int = 5, history: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    sparse = torch.stack([torch.randint(0, n, (batch,)) for n in FIELD_DIMS], dim=1)
    hist = torch.randint(1, N + 1, (batch, history))
    for b in range(batch):
        hist[b, : b % history] = 0
    return sparse, torch.randn(batch, DENSE), hist


def _inputs(model: nn.Module, kwargs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    if model.objective == "ctr":
        sparse, dense, hist = ctr_inputs()
        return sparse, dense[:, : kwargs.get("dense_dim", 0)], hist
    return (seq_inputs(),)


def test_the_zoo_covers_every_registered_student() -> None:
    assert {name for name, _ in ZOO} == set(STUDENTS)


@pytest.mark.parametrize("case", ZOO, ids=_id)
def test_count_widths_and_last(case: tuple[str, dict[str, Any]]) -> None:
    name, kwargs = case
    model = build_student(name, **kwargs).eval()
    inputs = _inputs(model, kwargs)
    enc = model.encode(*inputs)
    n = model.num_layers
    assert isinstance(n, int) and n >= 0
    assert len(enc.layers) == n + 1 == len(model.layer_widths)
    batch = inputs[0].shape[0]
    if model.objective == "ctr":
        assert [tuple(h.shape) for h in enc.layers] == [(batch, w) for w in model.layer_widths]
        assert enc.layers[-1] is enc.last and model.hidden_size == model.layer_widths[-1]
        torch.testing.assert_close(model(*inputs), model.score(enc.last) + enc.logit_offset)
    else:
        length = inputs[0].shape[1]
        assert [tuple(h.shape) for h in enc.layers] == [(batch, length, w) for w in model.layer_widths]
        assert model.layer_widths[0] == model.layer_widths[-1] == model.hidden_size
        assert enc.layers[-1] is enc.sequence
        torch.testing.assert_close(enc.last, enc.layers[-1][:, -1])
        torch.testing.assert_close(model(*inputs), model.score(enc.last))
        assert model.encoder_input(inputs[0]).shape == inputs[0].shape  # positions align with these tokens


def test_declared_numbers_of_layers() -> None:
    """num_layers follows the constructor: blocks for sequential, MLP / cross blocks for CTR."""
    built = {_id(c): build_student(c[0], **c[1]) for c in ZOO}
    expected = {
        "sasrec[num_layers=2]": 2, "sasrec[num_layers=1]": 1, "gru4rec[num_layers=1]": 1,
        "gru4rec[num_layers=3,gru_size=12]": 3, "caser[]": 1, "bert4rec[num_layers=2]": 2,
        "deepfm[mlp_dims=(16, 8)]": 2, "deepfm[mlp_dims=()]": 0,
        "dcnv2[num_cross_layers=2,mlp_dims=(16, 8)]": 4,
        "dcnv2[num_cross_layers=2,mlp_dims=(16,),structure=parallel]": 4,
        "dcnv2[num_cross_layers=0,mlp_dims=(16,),structure=parallel]": 2,
        "dcnv2[num_cross_layers=2,mlp_dims=()]": 2, "din[mlp_dims=(16, 8)]": 2, "kar[]": 2,
    }
    assert {k: m.num_layers for k, m in built.items()} == expected
    gru = built["gru4rec[num_layers=3,gru_size=12]"]
    assert gru.layer_widths == (16, 12, 12, 16)
    dcn = built["dcnv2[num_cross_layers=2,mlp_dims=(16,),structure=parallel]"]
    x0 = 8 * len(FIELD_DIMS) + DENSE
    assert dcn.layer_widths == (x0, x0, x0, 16, x0 + 16)
    deepfm = built["deepfm[mlp_dims=(16, 8)]"]
    assert deepfm.layer_widths == (8 * (len(FIELD_DIMS) + 1), 16, 8)


def _capture(module: nn.Module, store: list, what: str) -> Any:
    def hook(_: nn.Module, args: tuple, output: Any) -> None:
        store.append(args[0] if what == "input" else (output[0] if isinstance(output, tuple) else output))

    return module.register_forward_hook(hook)


def _block_hooks(model: nn.Module) -> tuple[Callable[[], None], list, list]:
    """Hook the first block's input and every block's output, in the student's own terms."""
    first_in: list = []
    outputs: list = []
    name = model.registry_name
    if name == "kar":  # the knowledge-augmented wrapper's layers are its backbone's
        return _block_hooks(model.backbone)
    handles = []
    if name in ("sasrec", "bert4rec"):
        handles.append(_capture(model.blocks[0], first_in, "input"))
        handles += [_capture(b, outputs, "output") for b in model.blocks]
    elif name == "gru4rec":
        handles.append(_capture(model.grus[0], first_in, "input"))
        handles += [_capture(g, outputs, "output") for g in model.grus]
    elif name == "caser":
        handles.append(_capture(model.item_embedding, first_in, "output"))
        handles.append(_capture(model.fc, outputs, "output"))
    elif name in ("deepfm", "din"):
        blocks = list(model.mlp.blocks)
        handles += [_capture(b, outputs, "output") for b in blocks]
        if blocks:
            handles.append(_capture(blocks[0], first_in, "input"))
    elif name == "dcnv2":
        handles += [_capture(c, outputs, "output") for c in model.cross.layers]  # W x + b, not x_{l+1}
        handles += [_capture(b, outputs, "output") for b in model.mlp.blocks]
        first = model.cross.layers[0] if len(model.cross.layers) else (model.mlp.blocks[0] if model.mlp.blocks else None)
        if first is not None:
            handles.append(_capture(first, first_in, "input"))
    return lambda: [h.remove() for h in handles], first_in, outputs


@pytest.mark.parametrize("case", ZOO, ids=_id)
def test_layer0_is_the_first_blocks_input_and_entries_are_block_outputs(case: tuple[str, dict[str, Any]]) -> None:
    name, kwargs = case
    model = build_student(name, **kwargs).eval()
    inputs = _inputs(model, kwargs)
    if name == "gru4rec":  # no padding: the GRU reads the (unrotated) embeddings as they are
        inputs = (torch.randint(1, N + 1, (3, 7)),)
    remove, first_in, outputs = _block_hooks(model)
    with torch.no_grad():
        enc = model.encode(*inputs)
    remove()
    if name == "kar":  # checked as its backbone, which read [dense; adapter output]
        model, kwargs, name = model.backbone, model.backbone.init_args, model.backbone.registry_name
    if first_in:
        torch.testing.assert_close(enc.layers[0], first_in[0])
    n = model.num_layers
    if name in ("sasrec", "bert4rec"):
        for i in range(n - 1):
            torch.testing.assert_close(enc.layers[i + 1], outputs[i])
        final = model.final_norm(outputs[-1]) if name == "sasrec" else outputs[-1]
        torch.testing.assert_close(enc.layers[-1], final)
    elif name == "gru4rec":
        for i in range(n - 1):
            torch.testing.assert_close(enc.layers[i + 1], outputs[i])
        torch.testing.assert_close(enc.layers[-1], model.dense(outputs[-1]))
    elif name == "caser":
        torch.testing.assert_close(enc.layers[1].flatten(0, 1), torch.relu(outputs[0]))
    elif name in ("deepfm", "din"):
        for i, out in enumerate(outputs):
            torch.testing.assert_close(enc.layers[i + 1], out)
        if not outputs:
            assert len(enc.layers) == 1
    elif name == "dcnv2":
        crosses = len(model.cross.layers)
        x0, x = enc.layers[0], enc.layers[0]
        for i in range(crosses):  # x_{l+1} = x_0 * (W x_l + b) + x_l
            x = x0 * outputs[i] + x
            torch.testing.assert_close(enc.layers[i + 1], x)
        for j, out in enumerate(outputs[crosses:]):
            torch.testing.assert_close(enc.layers[crosses + 1 + j], out)
        if kwargs.get("structure") == "parallel":
            deep_out = outputs[-1] if model.mlp.blocks else x0
            torch.testing.assert_close(enc.layers[-1], torch.cat([x, deep_out], dim=1))


@pytest.mark.parametrize("case", SEQUENTIAL, ids=_id)
def test_positions_follow_the_tokens_read(case: tuple[str, dict[str, Any]]) -> None:
    """Causal: every entry at position t depends on tokens <= t only. Cloze: encode(x) is
    encode_masked(encoder_input(x)), entry by entry, and every entry sees every token."""
    name, kwargs = case
    model = build_student(name, **kwargs).eval()
    x = seq_inputs(3, 8, (0, 2, 5))
    with torch.no_grad():
        enc = model.encode(x)
        if model.objective == "cloze":
            tokens = model.encoder_input(x)
            assert torch.equal(tokens, model.append_mask(x))
            again = model.encode_masked(tokens)
            for a, b in zip(enc.layers, again.layers):
                torch.testing.assert_close(a, b)
            changed = tokens.clone()
            changed[:, -2] = tokens[:, -2] % N + 1
            later = model.encode_masked(changed)
            for i in range(1, len(enc.layers)):  # block outputs see the whole sequence
                assert not torch.allclose(later.layers[i][0, 0], again.layers[i][0, 0])
            return
        assert torch.equal(model.encoder_input(x), x)
        for t in range(7):
            changed = x.clone()
            changed[:, t + 1:] = torch.randint(1, N + 1, (3, 7 - t))
            later = model.encode(changed)
            for a, b in zip(enc.layers, later.layers):
                torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
        if name != "caser":  # block outputs read the whole prefix (Caser only its window)
            changed = x.clone()
            changed[0, 0] = x[0, 0] % N + 1
            assert not torch.allclose(model.encode(changed).layers[-1][0, -1], enc.layers[-1][0, -1])


@pytest.mark.parametrize("case", ZOO, ids=_id)
def test_layers_carry_gradients(case: tuple[str, dict[str, Any]]) -> None:
    """A feature loss on any entry reaches the student's parameters (nothing is detached)."""
    name, kwargs = case
    model = build_student(name, **kwargs).train()
    inputs = _inputs(model, kwargs)
    for i in range(model.num_layers + 1):
        model.zero_grad()
        model.encode(*inputs).layers[i].pow(2).sum().backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
        assert grads, f"layers[{i}] of {name} carries no gradient"


@pytest.mark.parametrize("case", SEQUENTIAL, ids=_id)
def test_contract_holds_at_other_shapes(case: tuple[str, dict[str, Any]]) -> None:
    name, kwargs = case
    model = build_student(name, **kwargs).eval()
    for batch, length in [(1, 1), (2, 10), (4, 3)]:
        x = seq_inputs(batch, length, tuple([length // 2] * batch))
        enc = model.encode(x)
        assert len(enc.layers) == model.num_layers + 1
        assert all(h.shape == (batch, length, w) for h, w in zip(enc.layers, model.layer_widths))
        torch.testing.assert_close(model(x), model.score(enc.layers[-1][:, -1]))
