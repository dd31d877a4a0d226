"""Structured pruning of a student at a chosen ratio; the result is a plain, loadable student.

``prune_student(model, ratio)`` removes the lowest-magnitude (L2) channels of every prunable
width, then rebuilds a fresh student from the new constructor sizes and loads the pruned
weights into it (strict). That rebuild is the re-sync: ``num_heads``/``head_dim``/
``hidden_size``/``ffn_size`` are those of the new constructor arguments, ``init_args`` records
them (so ``save_student`` -> ``load_student`` rebuilds the pruned student), and the forward is
re-checked by comparing the in-place pruned model with the rebuilt one on a probe batch.

What is pruned, per student (``ratio`` = fraction of channels removed from each width):

- ``sasrec``, ``bert4rec``: torch-pruning's DepGraph (``tp.DependencyGraph``) traces the model and
  yields the coupled groups. Hidden width = the item table, the position table, every LayerNorm,
  every Q/K/V/FFN input, every output projection and the scoring layer that reads it (one
  group). Attention width follows it (the constructors tie the Q/K/V width to ``hidden_size``):
  ``attention="head_dims"`` removes the same head dimensions from every head (``num_heads``
  kept), ``attention="heads"`` removes whole heads (``head_dim`` kept). FFN width per block.
  torch-pruning does not update ``num_heads``/``head_dim``: the rebuild does.
- ``caser``: horizontal and vertical convolution channels (the same number kept for every
  filter height, as the constructor has one ``num_horizontal``) and ``hidden_size``. DepGraph
  mis-groups Caser's windowed convolutions (all convolutions land in one group with wrong index
  counts), so the dependencies are listed explicitly and pruned with torch-pruning's functions:
  conv out-channels -> the matching ``fc`` input columns; an embedding column -> the horizontal
  kernels' column and every vertical channel's ``fc`` input column that reads it; an ``fc``
  output -> the scoring layer's input column. ``hidden_size`` names two widths (the item table
  and ``fc``'s output), so both keep the same number of channels, each chosen by its own norm.
- ``deepfm``, ``dcnv2``, ``din``: every MLP width (``mlp_dims``; DIN also ``attention_dims``),
  with explicit dependencies (block out -> next block / output layer in) pruned by
  torch-pruning's Linear functions. DepGraph cannot build DIN's graph (torch-pruning 1.6
  fails on a ``torch.cat`` with a raw input tensor). Field embeddings, DCN-v2 cross layers
  (their width is the concatenated input, which includes the raw dense features) and the
  output layer are not pruned.
- ``kar`` (a knowledge-augmented CTR student): its backbone by the backbone's own rule (the
  rebuilt wrapper gets the pruned widths in ``backbone_args``); the frozen teacher tables and the
  small gated-expert adapter over them are kept.
- ``gru4rec``: torch-pruning has no pruning function for ``nn.GRU`` (DepGraph knows LSTM only),
  so the GRU widths are pruned by hand with the same L2 criterion: ``gru_size`` (the rows of
  the three gates of every unit, the recurrent columns, the next layer's/dense input columns)
  and ``hidden_size`` (item table columns, the first GRU's input columns, the dense rows).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch
import torch_pruning as tp
from torch import nn

from recdistill.student import build_student

ATTENTION_MODES = ("head_dims", "heads")


class PruningError(RuntimeError):
    """The pruned shapes do not fit the student's constructor, or the forward changed on rebuild."""


@dataclass
class PruneReport:
    student: str
    ratio: float
    params_before: int
    params_after: int
    init_args_before: dict[str, Any]
    init_args_after: dict[str, Any]
    pruned: list[str] = field(default_factory=list)  # which widths were pruned, "name: before -> after"
    not_pruned: dict[str, str] = field(default_factory=dict)  # part -> reason

    @property
    def param_ratio(self) -> float:
        return self.params_after / self.params_before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "param_ratio": self.param_ratio}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _keep(n: int, ratio: float) -> int:
    return max(1, int(round(n * (1.0 - ratio))))


def _lowest(importance: torch.Tensor, n_remove: int) -> list[int]:
    return sorted(torch.argsort(importance.detach().float())[:n_remove].tolist())


def prune_student(
    model: nn.Module, ratio: float, *, attention: str = "head_dims", prune_hidden: bool = True,
) -> tuple[nn.Module, PruneReport]:
    """Return ``(pruned student, report)``; ``model`` is left untouched (see module docstring)."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if attention not in ATTENTION_MODES:
        raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
    name = getattr(model, "registry_name", None)
    if name not in _PRUNERS:
        raise PruningError(f"no pruning rule for student {name!r}; known: {sorted(_PRUNERS)}")
    work = copy.deepcopy(model).eval()
    report = PruneReport(name, ratio, count_params(model), 0, dict(model.init_args), {})
    new_args = _PRUNERS[name](work, ratio, report, attention=attention, prune_hidden=prune_hidden)
    rebuilt = _rebuild(name, {**model.init_args, **new_args}, work, report)
    report.init_args_after = dict(rebuilt.init_args)
    report.params_after = count_params(rebuilt)
    return rebuilt, report


def probe_inputs(model: nn.Module, batch: int = 3, length: int = 8, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A deterministic input batch for any student (sequential ids or CTR ``sparse, dense, history``)."""
    g = torch.Generator().manual_seed(seed)
    args = model.init_args
    if "field_dims" in args:
        dims = torch.tensor(args["field_dims"])
        sparse = (torch.rand(batch, len(dims), generator=g) * dims).long()
        dense = torch.randn(batch, args.get("dense_dim", 0), generator=g)
        num_items = getattr(model, "num_items", 0) or args.get("num_items", 0) or 1
        history = torch.randint(0, num_items + 1, (batch, length), generator=g)
        return sparse, dense, history
    length = min(length, getattr(model, "max_len", length))
    ids = torch.randint(1, model.num_items + 1, (batch, length), generator=g)
    ids[0, : length // 2] = 0  # some left padding
    return (ids,)


def _rebuild(name: str, init_args: dict[str, Any], pruned: nn.Module, report: PruneReport) -> nn.Module:
    try:
        fresh = build_student(name, **init_args)
    except (TypeError, ValueError) as exc:
        raise PruningError(f"{name}: the pruned sizes {init_args} do not fit the constructor: {exc}") from None
    state = pruned.state_dict()
    expected = fresh.state_dict()
    bad = [f"{k}: pruned {tuple(state[k].shape)} vs constructor {tuple(v.shape)}"
           for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if bad or set(state) != set(expected):
        raise PruningError(f"{name}: pruned weights do not fit the constructor {init_args}: {bad[:5]}")
    fresh.load_state_dict(state, strict=True)
    fresh.eval()
    inputs = probe_inputs(fresh)
    with torch.no_grad():
        a, b = pruned(*inputs), fresh(*inputs)
    if not torch.allclose(a, b, atol=1e-5, rtol=1e-4):
        raise PruningError(f"{name}: the rebuilt student's forward differs from the pruned module "
                           f"(max |diff| {float((a - b).abs().max()):.3g}): attributes out of sync")
    return fresh


# -- transformers (DepGraph) -------------------------------------------------------------------

def _prune_transformer(m: nn.Module, ratio: float, report: PruneReport, *, attention: str,
                       prune_hidden: bool) -> dict[str, Any]:
    att0 = m.blocks[0].attention
    heads, head_dim, hidden = att0.num_heads, att0.head_dim, m.item_embedding.embedding_dim
    ffn = m.blocks[0].ffn[0].out_features
    keep_ffn = _keep(ffn, ratio)
    keep_heads, keep_hd = heads, head_dim
    if prune_hidden and attention == "heads":
        keep_heads = _keep(heads, ratio)
        if keep_heads == heads:
            report.not_pruned["hidden"] = (f"attention='heads' with {heads} head(s) at ratio {ratio} keeps every head, "
                                           "and the Q/K/V width is tied to hidden_size; use attention='head_dims'")
    elif prune_hidden:
        keep_hd = _keep(head_dim, ratio)
    elif ratio > 0:
        report.not_pruned["hidden"] = ("prune_hidden=False (the attention width is tied to hidden_size, "
                                       "so it is not pruned either)")
    keep_hidden = keep_heads * keep_hd

    ignored = [m.output] if isinstance(getattr(m, "output", None), nn.Linear) else []
    graph = tp.DependencyGraph().build_dependency(m, example_inputs=probe_inputs(m))
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    attn = {b.attention.query: b.attention for b in m.blocks}
    attn.update({b.attention.key: b.attention for b in m.blocks})
    attn.update({b.attention.value: b.attention for b in m.blocks})
    ffn_in = {b.ffn[0] for b in m.blocks}
    plans: list[tuple[Any, list[int]]] = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Linear, nn.Embedding]):
        modules = {dep.target.module for dep, _ in group}
        imp = importance(group)
        if imp is None:
            continue
        if m.item_embedding in modules:
            if keep_hidden < hidden:
                plans.append((group, _lowest(imp, hidden - keep_hidden)))
        elif modules & set(attn):
            if keep_hidden == hidden:
                continue
            per_head = imp.view(heads, head_dim)
            if keep_heads < heads:  # whole heads
                drop = _lowest(per_head.mean(1), heads - keep_heads)
                plans.append((group, [h * head_dim + d for h in drop for d in range(head_dim)]))
            else:  # the same dims in every head
                drop = _lowest(per_head.mean(0), head_dim - keep_hd)
                plans.append((group, [h * head_dim + d for h in range(heads) for d in drop]))
        elif modules & ffn_in:
            if keep_ffn < ffn:
                plans.append((group, _lowest(imp, ffn - keep_ffn)))
    for group, idxs in plans:
        group.prune(idxs)
    for block in m.blocks:  # torch-pruning leaves these attributes stale
        block.attention.num_heads = keep_heads
        block.attention.head_dim = keep_hd
    m.hidden_size = keep_hidden
    if keep_hidden < hidden:
        report.pruned.append(f"hidden_size: {hidden} -> {keep_hidden}")
        report.pruned.append(f"attention: {heads} heads x {head_dim} -> {keep_heads} heads x {keep_hd}")
    if keep_ffn < ffn:
        report.pruned.append(f"ffn_size: {ffn} -> {keep_ffn}")
    return {"hidden_size": keep_hidden, "num_heads": keep_heads, "ffn_size": keep_ffn}


# -- Caser (explicit dependencies, torch-pruning functions) ------------------------------------

def _prune_caser(m: nn.Module, ratio: float, report: PruneReport, *, prune_hidden: bool = True,
                 **_: Any) -> dict[str, Any]:
    d = m.item_embedding.embedding_dim
    nv, nh = m.vertical.out_channels, m.horizontal[0].out_channels
    keep_v, keep_h = _keep(nv, ratio), _keep(nh, ratio)
    remove_cols: list[int] = []
    drop_v = _lowest(m.vertical.weight.flatten(1).norm(dim=1), nv - keep_v)
    remove_cols += [c * d + j for c in drop_v for j in range(d)]
    drops_h = [_lowest(conv.weight.flatten(1).norm(dim=1), nh - keep_h) for conv in m.horizontal]
    for i, drop in enumerate(drops_h):
        remove_cols += [nv * d + i * nh + c for c in drop]
    if drop_v:
        tp.prune_conv_out_channels(m.vertical, drop_v)
    for conv, drop in zip(m.horizontal, drops_h):
        if drop:
            tp.prune_conv_out_channels(conv, drop)
    if remove_cols:
        tp.prune_linear_in_channels(m.fc, sorted(remove_cols))
    report.pruned += [f"num_vertical: {nv} -> {keep_v}", f"num_horizontal: {nh} -> {keep_h}"]
    if not prune_hidden:
        report.not_pruned["hidden_size"] = "prune_hidden=False"
        return {"num_vertical": keep_v, "num_horizontal": keep_h}
    keep_d = _keep(d, ratio)
    _prune_caser_width(m, d - keep_d)
    m.hidden_size = keep_d
    if keep_d < d:
        report.pruned.append(f"hidden_size: {d} -> {keep_d} (item table columns and fc outputs)")
    return {"num_vertical": keep_v, "num_horizontal": keep_h, "hidden_size": keep_d}


def _prune_caser_width(m: nn.Module, n_remove: int) -> None:
    """Remove ``n_remove`` item-table columns (L2 norm over the table and the horizontal kernels that
    read them) and as many ``fc`` outputs (L2 norm of the ``fc`` row, its bias and the scoring
    layer's column that reads it); Caser's constructor ties both widths to ``hidden_size``."""
    if n_remove <= 0:
        return
    d, nv = m.item_embedding.embedding_dim, m.vertical.out_channels
    table = m.item_embedding.weight.detach()
    col_score = table.norm(dim=0) + sum(conv.weight.detach()[:, 0].norm(dim=(0, 1)) for conv in m.horizontal)
    drop_cols = _lowest(col_score, n_remove)
    keep_cols = torch.tensor(sorted(set(range(d)) - set(drop_cols)))
    # the vertical filters weigh window rows per embedding column: channel c's output column j -> fc input c*d + j;
    # a removed column still carried the vertical bias b_c into fc, which fc's bias takes over
    removed = [c * d + j for c in range(nv) for j in drop_cols]
    with torch.no_grad():
        vertical_bias = m.vertical.bias.detach().repeat_interleave(len(drop_cols))
        m.fc.bias += m.fc.weight[:, removed] @ vertical_bias
    tp.prune_linear_in_channels(m.fc, removed)
    tp.prune_embedding_out_channels(m.item_embedding, drop_cols)
    for conv in m.horizontal:
        _slice_param(conv, "weight", conv.weight.detach()[..., keep_cols])
        conv.kernel_size = (conv.kernel_size[0], len(keep_cols))
    fc_score = torch.cat([m.fc.weight, m.fc.bias[:, None]], 1).detach().norm(dim=1) + \
        m.output.weight.detach().norm(dim=0)
    drop_out = _lowest(fc_score, n_remove)
    tp.prune_linear_out_channels(m.fc, drop_out)
    tp.prune_linear_in_channels(m.output, drop_out)


# -- CTR MLPs (explicit dependencies, torch-pruning functions) ---------------------------------

def _prune_mlp(mlp: nn.Module, consumer: nn.Linear, ratio: float, offset: int = 0) -> list[int]:
    """Prune every block of a ``layers.MLP``; returns the new widths."""
    blocks = list(mlp.blocks)
    widths = []
    for i, block in enumerate(blocks):
        linear = block[0]
        n = linear.out_features
        keep = _keep(n, ratio)
        drop = _lowest(torch.cat([linear.weight, linear.bias[:, None]], 1).norm(dim=1), n - keep)
        if drop:
            tp.prune_linear_out_channels(linear, drop)
            act = block[1]
            if isinstance(act, nn.PReLU) and act.num_parameters > 1:
                tp.prune_prelu_out_channels(act, drop)
            nxt, shift = (blocks[i + 1][0], 0) if i + 1 < len(blocks) else (consumer, offset)
            tp.prune_linear_in_channels(nxt, [shift + c for c in drop])
        widths.append(keep)
    if blocks:
        mlp.out_dim = widths[-1]
    return widths


def _prune_deepfm(m: nn.Module, ratio: float, report: PruneReport, **_: Any) -> dict[str, Any]:
    before = [b[0].out_features for b in m.mlp.blocks]
    dims = _prune_mlp(m.mlp, m.output, ratio)
    report.pruned.append(f"mlp_dims: {before} -> {dims}")
    report.not_pruned["embed_dim"] = "shared by the FM term across all fields (one embed_dim)"
    return {"mlp_dims": dims}


def _prune_dcnv2(m: nn.Module, ratio: float, report: PruneReport, **_: Any) -> dict[str, Any]:
    before = [b[0].out_features for b in m.mlp.blocks]
    x0 = m.cross.layers[0].in_features if len(m.cross.layers) else m.output.in_features - m.mlp.out_dim
    offset = x0 if m.structure == "parallel" else 0
    if m.structure == "stacked" or m.mlp.blocks:
        dims = _prune_mlp(m.mlp, m.output, ratio, offset)
    else:
        dims = []
    report.pruned.append(f"mlp_dims: {before} -> {dims}")
    report.not_pruned["cross_layers"] = "their width is x0 = [field embeddings; raw dense features]"
    return {"mlp_dims": dims}


def _prune_din(m: nn.Module, ratio: float, report: PruneReport, **_: Any) -> dict[str, Any]:
    before = [b[0].out_features for b in m.mlp.blocks]
    before_att = [b[0].out_features for b in m.attention.mlp.blocks]
    dims = _prune_mlp(m.mlp, m.output, ratio)
    att = _prune_mlp(m.attention.mlp, m.attention.score, ratio)
    report.pruned += [f"mlp_dims: {before} -> {dims}", f"attention_dims: {before_att} -> {att}"]
    report.not_pruned["embed_dim"] = "shared by the candidate, the history and the other fields (one embed_dim)"
    return {"mlp_dims": dims, "attention_dims": att}


def _prune_kar(m: nn.Module, ratio: float, report: PruneReport, **options: Any) -> dict[str, Any]:
    backbone = getattr(m.backbone, "registry_name", None)
    if backbone not in _PRUNERS or backbone == "kar":
        raise PruningError(f"kar: no pruning rule for its backbone {backbone!r}")
    new_args = _PRUNERS[backbone](m.backbone, ratio, report, **options)
    report.not_pruned["adapter"] = "the gated experts over the frozen teacher vectors (kept whole)"
    return {"backbone_args": {**m.init_args.get("backbone_args", {}), **new_args}}


# -- GRU4Rec (by hand: torch-pruning has no nn.GRU support) ------------------------------------

def _slice_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    setattr(module, name, nn.Parameter(value.detach().clone().contiguous()))


def _prune_gru4rec(m: nn.Module, ratio: float, report: PruneReport, *, prune_hidden: bool, **_: Any) -> dict[str, Any]:
    hidden, gru_size = m.item_embedding.embedding_dim, m.grus[0].hidden_size
    keep_g = _keep(gru_size, ratio)
    # gru_size: the same number of units in every layer (one constructor argument)
    for li, gru in enumerate(m.grus):
        H = gru.hidden_size
        w_ih, w_hh = gru.weight_ih_l0.detach(), gru.weight_hh_l0.detach()
        gates = lambda w: w.view(3, H, -1)  # noqa: E731
        score = gates(w_ih).norm(dim=(0, 2)) + gates(w_hh).norm(dim=(0, 2))
        keep = sorted(torch.argsort(score, descending=True)[:keep_g].tolist())
        rows = torch.tensor([g * H + k for g in range(3) for k in keep])
        k_idx = torch.tensor(keep)
        _slice_param(gru, "weight_ih_l0", w_ih[rows])
        _slice_param(gru, "weight_hh_l0", w_hh[rows][:, k_idx])
        _slice_param(gru, "bias_ih_l0", gru.bias_ih_l0.detach()[rows])
        _slice_param(gru, "bias_hh_l0", gru.bias_hh_l0.detach()[rows])
        gru.hidden_size = keep_g
        nxt = m.grus[li + 1] if li + 1 < len(m.grus) else None
        if nxt is not None:
            _slice_param(nxt, "weight_ih_l0", nxt.weight_ih_l0.detach()[:, k_idx])
            nxt.input_size = keep_g
        else:
            tp.prune_linear_in_channels(m.dense, sorted(set(range(H)) - set(keep)))
    keep_h = hidden
    if prune_hidden:
        keep_h = _keep(hidden, ratio)
        score = m.item_embedding.weight.detach().norm(dim=0) + m.dense.weight.detach().norm(dim=1)
        drop = _lowest(score, hidden - keep_h)
        if drop:
            tp.prune_embedding_out_channels(m.item_embedding, drop)
            tp.prune_linear_out_channels(m.dense, drop)
            keep = torch.tensor(sorted(set(range(hidden)) - set(drop)))
            _slice_param(m.grus[0], "weight_ih_l0", m.grus[0].weight_ih_l0.detach()[:, keep])
            m.grus[0].input_size = keep_h
        m.hidden_size = keep_h
        report.pruned.append(f"hidden_size: {hidden} -> {keep_h}")
    for gru in m.grus:
        gru._init_flat_weights()
    report.pruned.append(f"gru_size: {gru_size} -> {keep_g} (hand-written GRU pruning: torch-pruning cannot)")
    return {"hidden_size": keep_h, "gru_size": keep_g}


_PRUNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "sasrec": _prune_transformer,
    "bert4rec": _prune_transformer,
    "caser": _prune_caser,
    "deepfm": _prune_deepfm,
    "dcnv2": _prune_dcnv2,
    "din": _prune_din,
    "gru4rec": _prune_gru4rec,
    "kar": _prune_kar,
}
