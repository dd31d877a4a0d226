"""The contract every student follows, and the registry that names them.

Sequential students (item indices ``1..num_items``, ``0`` = padding, inputs left-padded):
- ``encode(input_ids: Long[B, L]) -> Encoded`` with ``last`` = the representation that predicts
  the next item ``[B, d]``, ``sequence`` = the same representation at every position ``[B, L, d]``
  (next-item targets at all positions in one forward pass) and ``layers`` = per-layer states.
- ``score(hidden: [..., d]) -> [..., num_items + 1]`` logits; column 0 (padding) is meaningless
  and is masked by metrics and losses.
- ``forward(input_ids) == score(encode(input_ids).last)``: what is exported and served.
- ``objective`` is ``"next_item"`` (causal) or ``"cloze"`` (BERT4Rec); cloze students expose
  ``mask_token`` and are trained on masked positions of ``sequence``.

CTR students take ``sparse: Long[B, F]`` (one id per categorical field, each field indexed
from 0 within its own vocabulary), ``dense: Float[B, D]`` and ``history: Long[B, H]``
(item indices, 0 = padding), and return one logit per row ``[B]``.

Students take explicit typed constructor arguments, never a dataset or a config object.
Attention uses separate Q/K/V ``nn.Linear`` layers and embeddings are called as modules, so
torch-pruning can trace the graph.
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
    """What a student's encoder returns; losses pick the pieces they need."""

    last: torch.Tensor  # [B, d]
    layers: tuple[torch.Tensor, ...] = ()  # per block, [B, L, d] (sequential) or [B, d] (CTR)
    sequence: torch.Tensor | None = None  # [B, L, d], sequential students only


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
    """Turn tuples into lists so the arguments round-trip through JSON/YAML."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in arguments.items()}

