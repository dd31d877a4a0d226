"""Precompute the frozen teacher vectors of a knowledge-augmented CTR student (KAR / LLM-ESR style).

KAR (Xi et al., RecSys 2024) feeds LLM knowledge vectors, computed once offline, through a small
trainable adapter into any CTR backbone; here the knowledge comes from a sequential teacher's
signal cache, so nothing of the teacher runs online:

- item vector ``i = T_item[item]``: the cache's item table (``score_items``, the item side of the
  teacher's score formula, or ``item_embeddings``);
- user vector ``u = T_user[e*(user)]``: the teacher's per-example state (``score_user``, ``user`` or
  ``hidden``) at ``e*(user)``, the user's LAST CTR *training* example that has a teacher row. Valid and
  test examples are never read (no leakage; the cache itself must pass
  :func:`~recdistill.distill.ctr_module.check_no_leakage`). Users without such a row get zeros and
  ``known = 0``.

Optional reduction to ``dim`` columns: with ``score_user``/``score_items`` (one space, ``u . i`` is the
teacher's logit) both tables are projected on one basis, the top right-singular vectors of the
uncentred stacked tables (so ``u . i`` is kept as far as rank ``dim`` allows); otherwise each table
is centred and gets its own PCA (centred SVD). Each table is then scaled to unit RMS over its known
rows (the user side's map from a raw state to a row is kept as a :class:`Projection`), and the
interaction ``s = u . i`` is standardised with its mean and std over the CTR training pairs.

``train_user_vectors``: ``"table"`` (default) trains on the served table. A user's last training state
has read every earlier training event, so on a training row it has already seen the row's item,
and on a valid/test row it never has: a train/serve skew. ``"example"`` removes it: each training row
reads the teacher's state *before its own event* (looked up in the cache by example id, projected as
the table is), while the saved student still serves the per-user table (the latest training state,
before the held-out events), so no teacher runs online either way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor, nn

USER_SIGNALS = ("score_user", "user", "hidden")
ITEM_SIGNALS = ("score_items", "item_embeddings")
_OPTIONS = {"adapter_dim", "num_experts", "expert_hidden", "dim", "user_signal", "item_signal", "user_field",
            "item_field", "interaction", "dropout", "train_user_vectors"}


@dataclass
class KnowledgeSpec:
    """The ``knowledge_features`` option of a CTR distillation recipe (see the module docstring)."""

    adapter_dim: int = 8
    num_experts: int = 2
    expert_hidden: int = 32
    dim: int | None = None  # reduce the teacher vectors to this many columns (None: keep them)
    user_signal: str | None = "score_user"  # None: items only
    item_signal: str | None = "score_items"  # None: users only
    user_field: int = 0
    item_field: int | None = None  # None: the first field after user_field with num_items + 1 ids
    interaction: bool | None = None  # None: on for score_user + score_items
    dropout: float = 0.0
    train_user_vectors: str = "table"  # "example": train rows read their own pre-event state (see below)

    @classmethod
    def parse(cls, options: Mapping[str, Any]) -> "KnowledgeSpec":
        unknown = sorted(set(options) - _OPTIONS)
        if unknown:
            raise ValueError(f"knowledge_features: unknown option(s) {unknown}; known: {sorted(_OPTIONS)}")
        spec = cls(**dict(options))
        if spec.user_signal not in (*USER_SIGNALS, None) or spec.item_signal not in (*ITEM_SIGNALS, None):
            raise ValueError(f"knowledge_features: user_signal must be one of {USER_SIGNALS} (or null), item_signal "
                             f"one of {ITEM_SIGNALS} (or null); got {spec.user_signal!r}, {spec.item_signal!r}")
        if spec.user_signal is None and spec.item_signal is None:
            raise ValueError("knowledge_features needs a user_signal or an item_signal")
        if spec.train_user_vectors not in ("table", "example"):
            raise ValueError(f"knowledge_features.train_user_vectors must be 'table' or 'example', "
                             f"got {spec.train_user_vectors!r}")
        if spec.dim is not None and spec.dim < 1:
            raise ValueError(f"knowledge_features.dim must be >= 1, got {spec.dim}")
        return spec

    @property
    def shared_space(self) -> bool:
        return (self.user_signal, self.item_signal) == ("score_user", "score_items")

    def use_interaction(self) -> bool:
        return self.shared_space if self.interaction is None else bool(self.interaction)

    def resolve_item_field(self, field_dims: list[int], num_items: int) -> int:
        if self.item_field is not None:
            return int(self.item_field)
        for f, size in enumerate(field_dims):
            if f != self.user_field and size == num_items + 1:
                return f
        raise ValueError(f"knowledge_features: no sparse field has num_items + 1 = {num_items + 1} ids; set item_field")


@dataclass
class KnowledgeTables:
    """Frozen tables for :class:`~recdistill.student.knowledge_features.KnowledgeAugmentedCTR`."""

    user_vectors: Tensor  # [num_users + 1, Du]: row = the user's sparse id (user index + 1); row 0 = zeros
    user_known: Tensor  # [num_users + 1]: 1 where the user has a training row in the cache
    item_vectors: Tensor  # [num_items + 1, Di]: row = item index; row 0 = padding
    user_example_ids: np.ndarray  # [num_users]: the example id each user vector was read from (-1: none)
    interaction_norm: tuple[float, float] = (0.0, 1.0)
    user_projection: "Projection | None" = None  # raw teacher state -> table row (for per-row training vectors)
    info: dict[str, Any] = field(default_factory=dict)


def last_training_example(train_user: np.ndarray, train_pos: np.ndarray, covered: np.ndarray,
                          num_users: int) -> np.ndarray:
    """Per user, the example id ``user * EXAMPLE_STRIDE + pos`` of its latest covered training row (-1: none)."""
    from recdistill.data.schema import EXAMPLE_STRIDE

    out = np.full(num_users, -1, dtype=np.int64)
    user, pos = train_user[covered].astype(np.int64), train_pos[covered].astype(np.int64)
    order = np.lexsort((pos, user))  # by user, then position: the last entry of a user is its latest row
    user, pos = user[order], pos[order]
    out[user] = user * EXAMPLE_STRIDE + pos  # later assignments win
    return out


@dataclass
class Projection:
    """``x -> ((x - mean) @ basis) * scale`` (``mean`` / ``basis`` None: that step is skipped)."""

    mean: Tensor | None = None
    basis: Tensor | None = None
    scale: float = 1.0

    def __call__(self, x: Tensor) -> Tensor:
        out = x.double()
        if self.mean is not None:
            out = out - self.mean
        if self.basis is not None:
            out = out @ self.basis
        return (out * self.scale).float()


def _fit_projection(fit: Tensor, dim: int | None, centre: bool, basis: Tensor | None = None) -> Projection:
    """Centre (optionally), project on ``basis`` or the top-``dim`` right-singular vectors of ``fit``,
    then scale to unit RMS over ``fit``."""
    fit = fit.double()
    mean = fit.mean(dim=0) if centre and len(fit) else None
    if basis is None and dim is not None and dim < fit.shape[1] and len(fit):
        basis = torch.linalg.svd(fit - mean if mean is not None else fit, full_matrices=False)[2][:dim].t()
    projection = Projection(mean, basis)
    out = projection(fit)
    rms = float(out.double().pow(2).mean().sqrt()) if out.numel() else 0.0
    projection.scale = 1.0 / rms if rms > 0 else 1.0
    return projection


def _user_rows(signals: Any, example_ids: np.ndarray | Tensor, signal: str) -> tuple[Tensor, Tensor]:
    """The teacher's per-example state ``[n, D]`` (the last block of a multi-block ``hidden``) and ``valid [n]``."""
    rows, valid = signals.lookup(example_ids, (signal,))
    vectors = rows[signal].float()
    return (vectors[:, -1] if vectors.dim() == 3 else vectors), valid


def row_user_vectors(signals: Any, example_ids: Tensor, spec: "KnowledgeSpec",
                     projection: Projection) -> tuple[Tensor, Tensor]:
    """Per training row: the teacher's state *before* its event, projected as the table is
    (``train_user_vectors: example``); rows without a teacher row get zeros and ``known = 0``."""
    vectors, valid = _user_rows(signals, example_ids.detach().cpu(), str(spec.user_signal))
    return projection(vectors) * valid.unsqueeze(1), valid.float()


def build_knowledge_tables(signals: Any, train_user: np.ndarray, train_pos: np.ndarray, train_item: np.ndarray,
                           num_users: int, spec: KnowledgeSpec, chunk: int = 8192) -> KnowledgeTables:
    """The frozen user and item tables from a teacher cache and the CTR *training* rows only.

    ``signals`` is a :class:`~recdistill.teacher.cache_reader.TeacherSignals`; ``train_*`` are the
    user index, position and item of every CTR training example (never valid or test ones).
    """
    from recdistill.data.schema import EXAMPLE_STRIDE

    info: dict[str, Any] = {"user_signal": spec.user_signal, "item_signal": spec.item_signal, "dim": spec.dim,
                            "train_user_vectors": spec.train_user_vectors}
    item_raw = None
    if spec.item_signal is not None:
        item_raw = (signals.score_items() if spec.item_signal == "score_items" else signals.item_embeddings()).float()
    example_ids = train_user.astype(np.int64) * EXAMPLE_STRIDE + train_pos.astype(np.int64)
    user_ids = np.full(num_users, -1, dtype=np.int64)
    known = torch.zeros(num_users + 1)
    user_raw = torch.zeros(0, 0)
    if spec.user_signal is not None:
        _, covered = signals.lookup(example_ids, ())
        user_ids = last_training_example(train_user, train_pos, covered.numpy(), num_users)
        has = user_ids >= 0
        user_raw, _ = _user_rows(signals, user_ids[has], spec.user_signal)
        known[1 + torch.from_numpy(np.flatnonzero(has))] = 1.0
        info["users_known"] = int(has.sum())
    basis = None
    if spec.shared_space and spec.dim is not None and item_raw is not None and len(user_raw):
        # one basis for both sides (uncentred, so u . i is kept as far as rank dim allows)
        unit = [_fit_projection(t, None, centre=False)(t) for t in (user_raw, item_raw[1:])]
        basis = torch.linalg.svd(torch.cat(unit).double(), full_matrices=False)[2][:spec.dim].t()
    centre = not spec.shared_space
    user_projection = item_table = None
    user_table = torch.zeros(num_users + 1, 0)
    if spec.user_signal is not None:
        user_projection = _fit_projection(user_raw, spec.dim, centre, basis)
        user_table = torch.zeros(num_users + 1, user_projection(user_raw[:1]).shape[1])
        user_table[known.bool()] = user_projection(user_raw)
    if item_raw is not None:
        item_table = _fit_projection(item_raw[1:], spec.dim, centre, basis)(item_raw)
        item_table[0] = 0.0
    norm = (0.0, 1.0)
    if spec.use_interaction() and user_table.shape[1] and item_table is not None and item_table.shape[1]:
        if spec.train_user_vectors == "example":  # the pairs the adapter trains on: each row's own state
            parts = []
            for start in range(0, len(example_ids), chunk):
                users, valid = row_user_vectors(signals, torch.from_numpy(example_ids[start:start + chunk]), spec,
                                                user_projection)
                items = item_table[torch.from_numpy(train_item[start:start + chunk])]
                parts.append((users * items).sum(1)[valid.bool()])
            scores = torch.cat(parts)
        else:
            scores = (user_table[torch.from_numpy(train_user + 1)] * item_table[torch.from_numpy(train_item)]).sum(1)
            scores = scores[known[torch.from_numpy(train_user + 1)].bool()]
        if scores.numel() > 1:
            norm = (float(scores.mean()), 1.0 / max(float(scores.std()), 1e-6))
    return KnowledgeTables(user_vectors=user_table, user_known=known,
                           item_vectors=torch.zeros(0, 0) if item_table is None else item_table,
                           user_example_ids=user_ids, interaction_norm=norm, user_projection=user_projection, info=info)


def vector_dims(signals: Any, spec: KnowledgeSpec) -> tuple[int, int]:
    """``(user_vector_dim, item_vector_dim)`` the tables will have (after the optional reduction)."""
    def width(signal: str | None, item: bool) -> int:
        if signal is None:
            return 0
        if item:
            table = signals.score_items() if signal == "score_items" else signals.item_embeddings()
            full = int(table.shape[1])
        else:
            sample, _ = signals.lookup(torch.as_tensor(signals.example_ids()[:1]), (signal,))
            full = int(sample[signal].shape[-1])
        return min(full, spec.dim) if spec.dim is not None else full

    signals.require([s for s in (spec.user_signal, spec.item_signal) if s is not None])
    return width(spec.user_signal, False), width(spec.item_signal, True)


def wrap_student(student: Any, spec: KnowledgeSpec, signals: Any, field_dims: list[int], dense_dim: int,
                 num_items: int) -> nn.Module:
    """A :class:`KnowledgeAugmentedCTR` around ``student`` (a CTR factory called with
    ``dense_dim + adapter_dim``, a built backbone, or already a knowledge-augmented student);
    the tables are zero until :func:`build_knowledge_tables` fills them."""
    from recdistill.student.knowledge_features import KnowledgeAugmentedCTR

    if isinstance(student, KnowledgeAugmentedCTR):
        return student
    user_dim, item_dim = vector_dims(signals, spec)
    if not isinstance(student, nn.Module):
        student = student(list(field_dims), dense_dim + spec.adapter_dim, num_items)
    return KnowledgeAugmentedCTR.around(
        student, dense_dim, user_vector_dim=user_dim, item_vector_dim=item_dim, adapter_dim=spec.adapter_dim,
        num_experts=spec.num_experts, expert_hidden=spec.expert_hidden,
        interaction=spec.use_interaction() and user_dim > 0 and user_dim == item_dim, user_field=spec.user_field,
        item_field=spec.resolve_item_field(list(field_dims), num_items), dropout=spec.dropout)


def row_task_loss(student: nn.Module, signals: Any, spec: KnowledgeSpec, projection: Projection,
                  batch: dict[str, Tensor]) -> Any:
    """BCE of a training batch whose user vectors are each row's own pre-event teacher state."""
    import torch.nn.functional as F

    from recdistill.student.tasks import CTRTaskOutput

    users, known = row_user_vectors(signals, batch["example_id"], spec, projection)
    device = batch["dense"].device
    encoded = student.encode(batch["sparse"], batch["dense"], batch["history"], user_vectors=users.to(device),
                             user_known=known.to(device))
    logits = student.score(encoded.last) + encoded.logit_offset
    loss = F.binary_cross_entropy_with_logits(logits, batch["label"].float())
    return CTRTaskOutput(loss=loss, logits=logits, encoded=encoded)


def fill_from_datamodule(student: nn.Module, signals: Any, datamodule: Any, spec: KnowledgeSpec) -> KnowledgeTables:
    """Build the tables from the data module's CTR *training* examples and copy them into ``student``."""
    examples = datamodule.examples["train"]
    split = datamodule.split
    flat = np.concatenate(split.sequences).astype(np.int64)
    starts = np.cumsum(split.lengths) - split.lengths
    items = flat[starts[examples.user] + examples.pos]
    tables = build_knowledge_tables(signals, examples.user, examples.pos, items, split.num_users, spec)
    student.set_knowledge(user_vectors=tables.user_vectors if student.user_vectors.shape[1] else None,
                          user_known=tables.user_known,
                          item_vectors=tables.item_vectors if student.item_vectors.shape[1] else None,
                          interaction_norm=tables.interaction_norm)
    return tables


__all__ = ["KnowledgeSpec", "KnowledgeTables", "Projection", "build_knowledge_tables", "fill_from_datamodule",
           "last_training_example", "row_task_loss", "row_user_vectors", "vector_dims", "wrap_student"]
