"""The contract every student follows, and the registry that names them.

Sequential students (item indices ``1..num_items``, ``0`` = padding, inputs left-padded):
- ``encode(input_ids: Long[B, L]) -> Encoded`` with ``last`` = the representation that predicts
  the next item ``[B, d]``, ``sequence`` = the same representation at every position ``[B, L, d]``
  (next-item targets at all positions in one forward pass) and ``layers`` (the layer contract
  below).
- ``score(hidden: [..., d]) -> [..., num_items + 1]`` logits; column 0 (padding) is meaningless
  and is masked by metrics and losses.
- ``forward(input_ids) == score(encode(input_ids).last)``: what is exported and served.
- ``encoder_input(input_ids) -> Long[B, L]``: the tokens ``encode`` actually reads (the input
  itself for causal students; BERT4Rec drops the oldest item and appends its mask token).
- ``objective`` is ``"next_item"`` (causal) or ``"cloze"`` (BERT4Rec); cloze students expose
  ``mask_token`` and ``encode_masked(tokens)`` and are trained on masked positions of ``sequence``.
- ``item_embedding`` (``nn.Embedding``): rows ``0..num_items`` are padding + items; extra tokens
  (BERT4Rec's mask) come after. :func:`item_input_table` returns those ``N + 1`` rows.

CTR students take ``sparse: Long[B, F]`` (one id per categorical field, each field indexed
from 0 within its own vocabulary), ``dense: Float[B, D]`` and ``history: Long[B, H]``
(item indices, 0 = padding), and return one logit per row ``[B]``:
``encode(sparse, dense, history) -> Encoded``, ``score(last: [B, d]) -> [B]`` (the output
layer) and ``forward(sparse, dense, history) == score(enc.last) + enc.logit_offset`` (the
offset is ``0`` except for DeepFM, where it carries the first-order and FM terms).

Layer contract (feature losses rely on this and on nothing else; tests/test_layer_contract.py
checks it for every registered student)
---------------------------------------------------------------------------------------------
Every student has ``num_layers`` = ``n`` (its number of blocks), ``layer_widths`` (``n + 1``
ints) and ``hidden_size`` (the width of ``last``). ``Encoded.layers`` has exactly ``n + 1``
entries, in the order of Hugging Face's ``output_hidden_states``:

- ``layers[0]`` is the embedding output: exactly the tensor the first block reads (after the
  student's own position embedding, LayerNorm and dropout, if any).
- ``layers[i]`` for ``1 <= i <= n`` is the output of block ``i``.
- The student's final transform is folded into the last entry (SASRec's final LayerNorm,
  GRU4Rec's dense layer), so ``layers[-1]`` is exactly what ``score`` reads:
  sequential ``layers[-1] is sequence`` and ``last == layers[-1][:, -1]``; CTR
  ``layers[-1] is last``. (With ``n == 0`` the one entry is both.)
- ``layers[i].shape[-1] == layer_widths[i]``. Sequential: every entry has width
  ``hidden_size`` except GRU4Rec's inner GRU outputs (entries ``1..n-1``, width ``gru_size``).
  CTR: ``layer_widths[0]`` is the width of the concatenated field embeddings (+ dense part),
  then each block's output width (see each student's docstring).
- Sequential positions: every entry is ``[B, L, w]``, aligned with ``encoder_input(input_ids)``
  (for ``encode_masked(tokens)``: with ``tokens``). Position ``t`` is the state after reading
  token ``t``: a causal student has read tokens ``<= t`` only, so ``score(sequence[:, t])``
  predicts the item that follows token ``t``; a cloze student has read every token, and at a
  masked position ``t`` its score predicts the item masked there (BERT4Rec's ``encode`` puts
  the mask at ``L - 1``, whose state predicts the next item). Values at left-padding positions
  are defined but meaningless: select real positions with ``tokens != 0``.
- CTR: every entry is ``[B, w]``, one row per example.
- Entries are not detached: a feature loss on ``layers[i]`` trains the student.

Students take explicit typed constructor arguments, never a dataset or a config object.
Attention uses separate Q/K/V ``nn.Linear`` layers and embeddings are called as modules, so
torch-pruning can trace the graph (no ``.weight`` slicing in ``forward``). ``num_layers`` and
``layer_widths`` (and CTR students' ``hidden_size``) are properties read from the modules, so
they follow pruning; a sequential ``hidden_size`` is a plain attribute to re-sync after pruning.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
from torch import nn


@dataclass
class Encoded:
    """What a student's encoder returns; losses pick the pieces they need (contract above)."""

    last: torch.Tensor  # [B, d]: what score reads (sequential: the state predicting the next item)
    layers: tuple[torch.Tensor, ...] = ()  # num_layers + 1 entries: embedding output, then each block
    sequence: torch.Tensor | None = None  # [B, L, d] == layers[-1], sequential students only
    logit_offset: torch.Tensor | float = 0.0  # CTR: forward == score(last) + logit_offset ([B] or 0)


STUDENTS: dict[str, type[nn.Module]] = {}

T = TypeVar("T", bound=type[nn.Module])


def register_student(name: str) -> Callable[[T], T]:
    """Class decorator: ``@register_student("sasrec")`` makes the model buildable by name."""

    def decorate(cls: T) -> T:
        if name in STUDENTS and STUDENTS[name] is not cls:
            raise ValueError(f"student name {name!r} is already registered to {STUDENTS[name].__name__}")
        STUDENTS[name] = cls
        cls.registry_name = name  # type: ignore[attr-defined]
        cls.__init__ = _recording_init(cls.__init__)  # type: ignore[method-assign]
        return cls

    return decorate


def _recording_init(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap ``__init__`` so every instance remembers its constructor arguments in ``init_args``.

    ``student/io.py`` saves ``(registry_name, init_args)`` next to the weights, so a student can
    be rebuilt for pruning, export or serving without the recipe that trained it.
    """
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        arguments.pop("self", None)
        init(self, *args, **kwargs)
        if type(self).__init__ is wrapped:  # the outermost registered class records its own args
            self.init_args = _plain(arguments)

    return wrapped


def _plain(arguments: dict[str, Any]) -> dict[str, Any]:
    """Turn tuples into lists and NumPy scalars (e.g. ``np.int64`` sizes read from arrays) into Python
    numbers, at any depth, so the arguments round-trip through JSON/YAML (``save_student``'s spec)."""
    return {k: _plain_value(v) for k, v in arguments.items()}


def _plain_value(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain_value(v) for k, v in value.items()}
    if type(value).__module__ == "numpy" and hasattr(value, "item") and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def item_input_table(student: nn.Module) -> torch.Tensor:
    """The sequential student's input item table ``[num_items + 1, d]`` (row 0 = padding), without
    extra tokens such as BERT4Rec's mask; detached. Raises ``TypeError`` for a student without one."""
    table = getattr(student, "item_embedding", None)
    num_items = getattr(student, "num_items", None)
    if not isinstance(table, nn.Embedding) or num_items is None:
        raise TypeError(f"{type(student).__name__} has no item_embedding table over num_items items")
    if table.num_embeddings < num_items + 1:
        raise ValueError(f"{type(student).__name__}.item_embedding has {table.num_embeddings} rows for "
                         f"{num_items} items")
    return table.weight.detach()[: num_items + 1]
