"""HLLM-style recommender teacher (Chen et al. 2024) on the first layers of a causal LLM.

item text --(base LLM, once, cached)--> item embedding [N, d_item]
item table (trainable | content+ID fusion | frozen) --> linear in --> rescale to the RMS of the
LLM's token embeddings --> first ``num_layers`` decoder layers via ``inputs_embeds`` (base frozen,
LoRA on q/k/v/o through peft) --> final norm --> linear out = user state [B, L, d_item]
logits = learnable scale x cosine(user state, item table) over items 1..N (column 0 = padding,
always ``-inf``). Training: full-softmax cross-entropy at every position in one forward pass.

Cold items (issue 7): with ``cold_gate_count = c`` every free per-item part (fusion residual,
trainable table's move away from its text init, projected collaborative embedding, item bias,
collaborative model's logits) is scaled by ``g_i = min(1, count_i / c)`` (``count_i`` = the item's
training interactions), so an item without interactions is scored from its text alone (its bias
is the trained items' mean bias, its collaborative logit is replaced by the LLM logit), and its
untrained rows have no effect. ``logq`` adds ``logq * log(popularity)`` to the training logits
only (popularity correction / logit adjustment), so the scores need not push unseen items down;
``content_dropout`` scores a share of the training rows with the text vectors alone (DropoutNet /
CLCRec), and ``content_loss_weight`` adds the content-only cross-entropy as a second head;
``text_pooling`` / ``text_layers`` / ``text_only_pooling`` choose
how item texts are pooled (see :mod:`recdistill.teacher.item_encoder`).

Split by job: this module builds the teacher (modules, tables, buffers) and is its public face, a
plain ``nn.Module`` (no Lightning); :mod:`~recdistill.teacher.hllm_model` encodes and scores,
:class:`~recdistill.teacher.lightning_module.TeacherLightningModule` holds a teacher and runs the
Lightning loop (steps, fusion-weight search, optimiser groups, resume checkpoints),
:mod:`~recdistill.teacher.checkpoint` owns the saved format and :mod:`~recdistill.teacher.collaborative`
the CF part.

Checkpoint (``save_pretrained``): peft adapter in ``save_pretrained`` format + head/table weights
(``head.safetensors``) + ``teacher.json`` (init args, base-model reference, dataset
fingerprint); the frozen base is reloaded from its source by ``from_pretrained``.
"""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recdistill.teacher.checkpoint import (  # noqa: F401  (re-exported: the teacher's saved format)
    FORMAT_VERSION,
    accepted_args,
    copy_trainable_state,
    is_trained_key,
    load_pretrained,
    load_teacher,
    restore_trainable_state,
    save_teacher,
)
from recdistill.teacher.collaborative import (  # noqa: F401  (re-exported: the hybrid teacher's CF part)
    COLLABORATIVE_FUSIONS,
    FUSION_GRID,
    collaborative_score_table,
    load_collaborative_embeddings,
    load_collaborative_model,
    load_item_embedding_file,
    mix_logits,
)
from recdistill.teacher.hllm_model import HLLMModelMixin
from recdistill.teacher.loading import BaseModelRef, load_base_model

ITEM_TABLE_MODES = ("trainable", "fusion", "frozen")
NOT_RECORDED = ("item_text", "item_embeddings", "tokenizer", "collaborative_embeddings", "collaborative_model",
                "item_train_counts")  # data, objects or paths recorded in their own form (see init_args)


class TeacherConfig(dict):
    """The teacher's constructor arguments, readable as attributes (``teacher.hparams.lr``)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def constructor_arguments(module: nn.Module) -> dict[str, Any]:
    """The named arguments of every ``__init__`` on the call stack that is building ``module``,
    outermost class last (so a subclass's own arguments are recorded with the base class's)."""
    args: dict[str, Any] = {}
    frame = inspect.currentframe()
    while frame is not None:
        code = frame.f_code
        if code.co_name == "__init__" and frame.f_locals.get("self") is module:
            names = code.co_varnames[1:code.co_argcount + code.co_kwonlyargcount]
            args.update({n: frame.f_locals[n] for n in names if n in frame.f_locals and n != "kwargs"})
        frame = frame.f_back
    return args


class HLLMTeacher(HLLMModelMixin, nn.Module):
    """LoRA-tuned LLM layers over item-text embeddings; next-item logits over the catalogue.

    A plain ``nn.Module``: train it with ``fit_teacher`` or wrap it in
    :class:`~recdistill.teacher.lightning_module.TeacherLightningModule` for a Lightning ``Trainer``.

    Args:
        num_items: catalogue size N (items are 1..N, 0 = padding).
        item_text: one text per item (index i <-> item i + 1); embedded once by the full base
            LLM (cached on disk). Not needed when ``item_embeddings`` is given.
        item_embeddings: precomputed ``Float[N, d]`` tensor, or a path to a ``.safetensors``
            (key ``item_text_embeddings``) / ``.npy`` / ``.pt`` file.
        base_model: asset name, ``.gguf`` path, local HF folder or hub id.
        num_layers: how many of the base model's first decoder layers to keep.
        text_encoder_layers: embed item texts with only the first n layers (default: all).
        item_table: ``"trainable"`` (table initialised from the text embeddings), ``"fusion"``
            (frozen text embedding + trainable per-item residual, init 0) or ``"frozen"``.
        lr / item_lr: learning rates (``item_lr`` for the item table; default ``lr``).
        weight_decay / item_weight_decay: AdamW weight decay (item table default: same).
        dropout: on the item vectors fed in and on the user state before the output projection.
        item_bias: add a learnable per-item logit bias (popularity) to the cosine score.
        random_init_layers: re-initialise the kept decoder layers and final norm (seeded, so a
            reload rebuilds the same weights); item texts are still embedded by the pretrained model.
        collaborative_model: a trained causal student folder (or module), frozen, whose logits are
            mixed with the teacher's (a hybrid LLM + CF teacher; cf. CoLLM, A-LLMRec). ``user``
            then carries the CF state after the first ``item_dim`` columns.
        collaborative_fusion: ``"ensemble"`` (default): the LLM part trains on its own loss and the
            output is ``alpha * teacher + (1 - alpha) * cf`` logits, ``alpha`` chosen on validation
            NDCG@10 from 0, 0.1, ..., 1 after every epoch (logged as ``valid/fusion_alpha``);
            ``"joint"``: ``teacher + w * cf`` with ``w`` learned, trained end to end (the LLM
            learns the CF model's residual).
        collaborative_embeddings: a trained student folder (its ``item_embedding.weight``) or an
            ``[N(+1), d]`` embedding file/tensor; frozen, standardised, linearly projected and
            added to the item table (CoLLM, Zhang et al. 2023; A-LLMRec, Kim et al. KDD 2024).
        init_scale / learn_scale: cosine-logit temperature (learnable by default).
        dataset_fingerprint: recorded in checkpoints and signal caches (set by ``fit_teacher``).
        trust_remote_code: let transformers run the base model's hub code; never saved in or read from a
            checkpoint (pass it again to ``from_pretrained`` / ``load_teacher`` / ``--trust-remote-code``).
        base_revision: hub revision (branch, tag or commit) of ``base_model``; checkpoints record the
            resolved commit and reload exactly that.
        text_pooling / text_layers / text_only_pooling: item-text pooling (``"mean"`` or ``"last"``
            token; hidden-state indices averaged, 0 = token embeddings, default last layer; leave
            the template's prefix out of the mean).
        cold_gate_count: ``c`` of the cold-item gate ``min(1, count / c)`` (None: no gate).
        collaborative_gate_counts: a grid of ``c_cf`` for the gate of the collaborative logits alone,
            ``min(1, count / c_cf)`` (from how many training interactions the CF model is trusted
            fully: its logits for rarely seen items are barely trained), chosen on validation
            together with ``alpha`` (ensemble fusion; default: ``cold_gate_count`` only).
        item_train_counts: training interactions per item index ``[N + 1]`` (gate and ``logq``);
            default: read from the trainer's data module at ``fit``; saved with the head.
        logq: weight of the popularity correction: training logits ``+ logq * log q_i``, ``q_i`` the
            item's smoothed training share (logit adjustment); scoring is unchanged.
        content_dropout: probability that a training row is scored with the text vectors alone.
        content_loss_weight: weight of an extra cross-entropy on the text-only scores.
        slice_mixture: ``true`` or a grid ``{max_counts, taus, pis}``: after fitting, choose on
            validation a two-expert mixture that scores items seen fewer than ``c0`` times by their
            (tempered) logits and the rest by the fused logits, calibrated per user
            (:mod:`recdistill.teacher.slice_mixture`); kept only if it beats the fused logits.
    """

    _needs_tokenizer = False  # subclass hooks (see TextPromptTeacher)
    _keep_token_embeddings = False
    _uses_item_inputs = True
    last_position_only = False  # True: encode() returns only the last position

    def __init__(
        self,
        num_items: int,
        item_text: list[str] | None = None,
        item_embeddings: Any = None,
        base_model: str = "smollm2-135m",
        gguf_file: str | None = None,
        num_layers: int = 6,
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.05,
        lora_targets: list[str] | None = None,
        item_table: str = "trainable",
        text_template: str = "Movie: {text}",
        text_max_length: int = 64,
        text_batch_size: int = 32,
        text_encoder_layers: int | None = None,
        embedding_cache_dir: str | None = None,
        dropout: float = 0.1,
        lr: float = 1e-3,
        item_lr: float | None = None,
        weight_decay: float = 0.0,
        item_weight_decay: float | None = None,
        init_scale: float = 20.0,
        learn_scale: bool = True,
        item_bias: bool = False,
        collaborative_embeddings: Any = None,
        random_init_layers: bool = False,
        collaborative_model: Any = None,
        collaborative_fusion: str = "ensemble",
        eval_ks: list[int] | None = None,
        mask_seen: bool = True,
        dataset_fingerprint: str | None = None,
        trust_remote_code: bool = False,
        base_revision: str | None = None,
        tokenizer: Any = None,
        progress: bool = True,
        text_pooling: str = "mean",
        text_layers: list[int] | None = None,
        text_only_pooling: bool = False,
        cold_gate_count: float | None = None,
        collaborative_gate_counts: list[float] | None = None,
        item_train_counts: Any = None,
        logq: float = 0.0,
        content_dropout: float = 0.0,
        content_loss_weight: float = 0.0,
        slice_mixture: Any = None,
    ) -> None:
        super().__init__()
        if slice_mixture is not None and slice_mixture is not False:
            from recdistill.teacher.slice_mixture import check_grid

            slice_mixture = check_grid(slice_mixture)
        else:
            slice_mixture = None
        if cold_gate_count is not None and not cold_gate_count > 0:
            raise ValueError(f"cold_gate_count must be > 0 or None, got {cold_gate_count}")
        if collaborative_gate_counts is not None:
            if cold_gate_count is None or collaborative_model is None or collaborative_fusion != "ensemble":
                raise ValueError("collaborative_gate_counts needs cold_gate_count, a collaborative_model and "
                                 "collaborative_fusion: ensemble")
            if not collaborative_gate_counts or any(not float(c) > 0 for c in collaborative_gate_counts):
                raise ValueError(f"collaborative_gate_counts must be a non-empty list of counts > 0, "
                                 f"got {collaborative_gate_counts}")
        if not 0.0 <= content_dropout <= 1.0:
            raise ValueError(f"content_dropout must be in [0, 1], got {content_dropout}")
        if item_table not in ITEM_TABLE_MODES:
            raise ValueError(f"item_table must be one of {ITEM_TABLE_MODES}, got {item_table!r}")
        if num_items < 1:
            raise ValueError("num_items must be >= 1")
        lora_targets = list(lora_targets or ["q_proj", "k_proj", "v_proj", "o_proj"])
        eval_ks = list(eval_ks or [5, 10, 20])
        recorded = {k: v for k, v in constructor_arguments(self).items() if k not in NOT_RECORDED}
        recorded.update(lora_targets=lora_targets, eval_ks=eval_ks)
        self.hparams = TeacherConfig(recorded)
        self.collaborative_model_source = (None if collaborative_model is None
                                           else str(collaborative_model) if not isinstance(collaborative_model, nn.Module)
                                           else "<module>")
        self.collaborative_source = (None if collaborative_embeddings is None
                                     else str(collaborative_embeddings) if not isinstance(collaborative_embeddings, Tensor)
                                     else "<tensor>")
        self.num_items = num_items
        self.dataset_fingerprint = dataset_fingerprint

        need_tokenizer = (item_embeddings is None or self._needs_tokenizer) and tokenizer is None
        model, tok, ref = load_base_model(base_model, gguf_file=gguf_file, trust_remote_code=trust_remote_code,
                                          revision=base_revision, load_tokenizer=need_tokenizer)
        self.base_ref: BaseModelRef = ref
        tokenizer = tokenizer if tokenizer is not None else tok
        self._tokenizer = tokenizer  # kept for subclasses; never saved

        text_emb = self._resolve_item_embeddings(item_embeddings, item_text, model, tokenizer, ref)
        if text_emb.shape[0] != num_items:
            raise ValueError(f"item embeddings have {text_emb.shape[0]} rows but num_items={num_items}")
        d_item = int(text_emb.shape[1])
        self.item_dim = d_item

        from recdistill.teacher.loading import truncate_layers

        truncate_layers(model, num_layers)
        inner = model.model
        if random_init_layers:  # control: same architecture, no pretrained sequence knowledge
            reinitialize_layers(model)
        with torch.no_grad():
            token_rms = inner.embed_tokens.weight.float().pow(2).mean().sqrt().item()
        hidden = int(model.config.hidden_size)
        self.hidden_size = hidden
        if not self._keep_token_embeddings:
            # Only inputs_embeds are used: drop the token table and LM head to save memory.
            inner.embed_tokens = nn.Embedding(1, hidden)
        for p in inner.parameters():
            p.requires_grad_(False)

        from peft import LoraConfig, get_peft_model

        self.lora_config = LoraConfig(
            r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
            target_modules=lora_targets, bias="none",
        )
        self.backbone = get_peft_model(inner, self.lora_config)
        del model

        padded = torch.cat([torch.zeros(1, d_item), text_emb.float()], 0)
        content_features = cold_gate_count is not None or content_dropout > 0 or content_loss_weight > 0
        if item_table == "trainable":
            self.item_emb = nn.Embedding(num_items + 1, d_item, padding_idx=0)
            with torch.no_grad():
                self.item_emb.weight.copy_(padded)
            if content_features:  # the text vectors stay available: the gate's prior, the content head
                self.register_buffer("item_text_emb", padded.clone(), persistent=True)
        else:
            self.register_buffer("item_text_emb", padded, persistent=True)
            if item_table == "fusion":
                self.item_residual = nn.Embedding(num_items + 1, d_item, padding_idx=0)
                nn.init.zeros_(self.item_residual.weight)
        if collaborative_embeddings is not None:  # CoLLM / A-LLMRec: frozen CF item embeddings
            collab = load_collaborative_embeddings(collaborative_embeddings, num_items)
            self.register_buffer("item_collab_emb", collab, persistent=True)
            self.collab_proj = nn.Linear(collab.shape[1], d_item)
        if item_bias:
            self.item_bias = nn.Parameter(torch.zeros(num_items + 1))
        self._counts_given = item_train_counts is not None
        if cold_gate_count is not None or logq or slice_mixture is not None:
            counts = (torch.zeros(num_items + 1) if item_train_counts is None
                      else torch.as_tensor(item_train_counts, dtype=torch.float32).flatten().clone())
            if counts.shape[0] != num_items + 1:
                raise ValueError(f"item_train_counts has {counts.shape[0]} entries; expected num_items + 1 = "
                                 f"{num_items + 1} (index 0 = padding)")
            self.register_buffer("item_train_count", counts, persistent=True)
        if collaborative_model is not None:  # frozen CF recommender; the LLM learns its residual
            if not self._uses_item_inputs:
                raise ValueError(f"{type(self).__name__} does not support collaborative_model")
            if collaborative_fusion not in COLLABORATIVE_FUSIONS:
                raise ValueError(f"collaborative_fusion must be one of {COLLABORATIVE_FUSIONS}, "
                                 f"got {collaborative_fusion!r}")
            self.collab_model = load_collaborative_model(collaborative_model, num_items)
            if collaborative_fusion == "joint":
                self.collab_weight = nn.Parameter(torch.tensor(1.0))
            else:  # LLM weight of the logit mixture, chosen on validation after every epoch
                self.register_buffer("fusion_alpha", torch.tensor(1.0), persistent=True)
                if collaborative_gate_counts is not None:  # c_cf, chosen with alpha
                    self.register_buffer("collab_gate_count", torch.tensor(float(cold_gate_count)), persistent=True)
        if slice_mixture is not None:  # (c0, tau, pi) chosen after fitting; pi = NaN: off
            self.register_buffer("mixture_max_count", torch.tensor(1.0), persistent=True)
            self.register_buffer("mixture_tau", torch.tensor(1.0), persistent=True)
            self.register_buffer("mixture_pi", torch.tensor(math.nan), persistent=True)
        if self._uses_item_inputs:
            self.in_proj = nn.Linear(d_item, hidden)
        self.out_proj = nn.Linear(hidden, d_item)
        self.drop = nn.Dropout(dropout)
        self.register_buffer("token_rms", torch.tensor(float(token_rms)), persistent=True)
        scale = torch.tensor(math.log(init_scale))
        if learn_scale:
            self.log_scale = nn.Parameter(scale)
        else:
            self.register_buffer("log_scale", scale, persistent=True)
        self.train()  # the base was loaded in eval mode; Lightning restores per-module modes

    # ------------------------------------------------------------------ construction helpers
    def _resolve_item_embeddings(self, item_embeddings, item_text, model, tokenizer, ref) -> Tensor:
        if item_embeddings is not None:
            if isinstance(item_embeddings, Tensor):
                return item_embeddings.detach().float().cpu()
            return load_item_embedding_file(item_embeddings)
        if item_text is None:
            raise ValueError("give item_text (to embed with the base LLM) or precomputed item_embeddings")
        if tokenizer is None:
            raise ValueError(f"base model {ref.source!r} has no tokenizer; pass tokenizer= or item_embeddings=")
        from recdistill.teacher.item_encoder import encode_item_texts

        hp = self.hparams
        if hp.text_encoder_layers is not None:  # cheaper item encoder: the first n layers only
            from recdistill.teacher.loading import truncate_layers

            truncate_layers(model, max(int(hp.text_encoder_layers), int(hp.num_layers)))
        return encode_item_texts(
            model, tokenizer, list(item_text), ref=ref, template=hp.text_template,
            max_length=hp.text_max_length, batch_size=hp.text_batch_size,
            cache_dir=hp.embedding_cache_dir, progress=hp.progress,
            pooling=hp.text_pooling, layers=hp.text_layers, text_only=hp.text_only_pooling,
        )

    def train(self, mode: bool = True) -> "HLLMTeacher":
        super().train(mode)
        if hasattr(self, "collab_model"):
            self.collab_model.eval()  # frozen CF model: no dropout while the teacher trains
        return self

    def init_args(self) -> dict[str, Any]:
        """Constructor arguments recorded in ``teacher.json`` (never ``trust_remote_code``)."""
        accepted = accepted_args(type(self))  # a subclass may pass parent args through **kwargs
        args = {k: v for k, v in dict(self.hparams).items() if k in accepted}
        args.pop("progress", None)
        args.pop("trust_remote_code", None)  # a loader option that runs code is never stored in a checkpoint
        if self.base_ref.kind == "hub":
            args["base_revision"] = self.base_ref.revision
        args["dataset_fingerprint"] = self.dataset_fingerprint
        args["collaborative_embeddings"] = self.collaborative_source
        args["collaborative_model"] = self.collaborative_model_source
        return args

    # ------------------------------------------------------------------ checkpoint
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write adapter + head + teacher.json to ``directory`` atomically; returns it."""
        return save_teacher(self, directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, check_base: bool = True, trust_remote_code: bool = False,
                        **overrides: Any) -> "HLLMTeacher":
        """Rebuild a teacher saved by :meth:`save_pretrained`, reloading the base from its source.

        ``teacher.json`` is untrusted input (see :mod:`recdistill.teacher.checkpoint`): code-executing
        loader options come only from ``trust_remote_code`` here, file paths in it are not followed, a hub
        base is reloaded at the recorded commit, and the base weights and the trained weights are checked
        against their recorded sha256 (a check that cannot be made raises ``BaseModelCheckWarning``).
        """
        return load_pretrained(cls, directory, check_base=check_base, trust_remote_code=trust_remote_code,
                               overrides=overrides)


def reinitialize_layers(model: nn.Module, seed: int = 0) -> None:
    """Re-draw the decoder layers and final norm of a causal LM with its own ``_init_weights``
    under a fixed seed (deterministic, independent of the global RNG)."""
    inner = model.model
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in [*inner.layers.modules(), *inner.norm.modules()]:
            model._init_weights(module)

