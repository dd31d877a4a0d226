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

Checkpoint (``save_pretrained``): peft adapter in ``save_pretrained`` format + head/table weights
(``head.safetensors``) + ``teacher.json`` (init args, base-model reference, dataset
fingerprint); the frozen base is reloaded from its source by ``from_pretrained``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from recdistill.atomic import atomic_directory
from torch import Tensor, nn

from recdistill.teacher.collaborative import (  # noqa: F401  (re-exported: the hybrid teacher's CF part)
    COLLABORATIVE_FUSIONS,
    FUSION_GRID,
    collaborative_score_table,
    load_collaborative_embeddings,
    load_collaborative_model,
    mix_logits,
)
from recdistill.teacher.loading import BaseModelRef, load_base_model

ITEM_TABLE_MODES = ("trainable", "fusion", "frozen")
FORMAT_VERSION = 1


def _state_hash(tensors: dict[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class HLLMTeacher(L.LightningModule):
    """LoRA-tuned LLM layers over item-text embeddings; next-item logits over the catalogue.

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
        item_train_counts: training interactions per item index ``[N + 1]`` (gate and ``logq``);
            default: read from the trainer's data module at ``fit``; saved with the head.
        logq: weight of the popularity correction: training logits ``+ logq * log q_i``, ``q_i`` the
            item's smoothed training share (logit adjustment); scoring is unchanged.
        content_dropout: probability that a training row is scored with the text vectors alone.
        content_loss_weight: weight of an extra cross-entropy on the text-only scores.
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
        item_train_counts: Any = None,
        logq: float = 0.0,
        content_dropout: float = 0.0,
        content_loss_weight: float = 0.0,
    ) -> None:
        super().__init__()
        if cold_gate_count is not None and not cold_gate_count > 0:
            raise ValueError(f"cold_gate_count must be > 0 or None, got {cold_gate_count}")
        if not 0.0 <= content_dropout <= 1.0:
            raise ValueError(f"content_dropout must be in [0, 1], got {content_dropout}")
        if item_table not in ITEM_TABLE_MODES:
            raise ValueError(f"item_table must be one of {ITEM_TABLE_MODES}, got {item_table!r}")
        if num_items < 1:
            raise ValueError("num_items must be >= 1")
        lora_targets = list(lora_targets or ["q_proj", "k_proj", "v_proj", "o_proj"])
        eval_ks = list(eval_ks or [5, 10, 20])
        self.save_hyperparameters(ignore=["item_text", "item_embeddings", "tokenizer", "collaborative_embeddings",
                                          "collaborative_model", "item_train_counts"])
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
        if cold_gate_count is not None or logq:
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
        self._val_acc = None
        self._val_mix = None
        self._test_acc = None
        self.emit_config: dict[str, Any] | None = None  # set by signals.emit_signals
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

    def setup(self, stage: str) -> None:
        """Read the per-item training counts from the trainer's data module (unless given)."""
        if self._counts_given or not hasattr(self, "item_train_count"):
            return
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        split = getattr(dm, "split", None)
        if split is not None and hasattr(split, "item_train_counts"):
            counts = torch.as_tensor(split.item_train_counts(), dtype=torch.float32)
            if counts.shape == self.item_train_count.shape:
                self.item_train_count.copy_(counts.to(self.item_train_count.device))

    # ------------------------------------------------------------------ cold items
    def cold_gate(self) -> Tensor | None:
        """``g [N + 1] = min(1, count / cold_gate_count)`` (0 for items never seen in training), or None."""
        c = self.hparams.get("cold_gate_count")
        if c is None:
            return None
        return (self.item_train_count / float(c)).clamp(max=1.0)

    def has_content_part(self) -> bool:
        return hasattr(self, "item_text_emb")

    def effective_item_bias(self) -> Tensor | None:
        """Per-item bias ``[N + 1]`` as scored: gated toward the mean bias of the trained items."""
        if not self.hparams.item_bias:
            return None
        g = self.cold_gate()
        if g is None:
            return self.item_bias
        weight = g.clone()
        weight[0] = 0.0
        prior = (weight * self.item_bias).sum() / weight.sum().clamp_min(1e-6)
        return g * self.item_bias + (1 - g) * prior

    def score_content(self, user: Tensor) -> Tensor:
        """Content-only logits ``[..., N + 1]``: scale x cosine(user, text vector); column 0 = ``-inf``."""
        items = F.normalize(self.item_text_emb, dim=-1)
        logits = self.logit_scale() * (F.normalize(user[..., :self.item_dim], dim=-1) @ items.t())
        logits = logits.clone()
        logits[..., 0] = -math.inf
        return logits

    # ------------------------------------------------------------------ model
    def item_vectors(self) -> Tensor:
        """The item table used for input and scoring, ``[N + 1, d_item]`` (row 0 = padding)."""
        mode = self.hparams.item_table
        g = self.cold_gate()
        g = None if g is None else g.unsqueeze(-1)
        if mode == "trainable":
            table = self.item_emb.weight
            if g is not None:  # a cold row keeps its text initialisation
                table = self.item_text_emb + g * (table - self.item_text_emb)
        elif mode == "fusion":
            residual = self.item_residual.weight
            table = self.item_text_emb + (residual if g is None else g * residual)
        else:
            table = self.item_text_emb
        if hasattr(self, "collab_proj"):
            collab = self.collab_proj(self.item_collab_emb)
            table = table + (collab if g is None else g * collab)
        return table

    def train(self, mode: bool = True) -> "HLLMTeacher":
        super().train(mode)
        if hasattr(self, "collab_model"):
            self.collab_model.eval()  # frozen CF model: no dropout while the teacher trains
        return self

    def logit_scale(self) -> Tensor:
        return self.log_scale.exp()

    def encode(self, input_ids: Tensor, output_hidden_states: bool = False) -> dict[str, Any]:
        """Run the sequence model. Returns ``user`` [B, L, d_item], ``hidden`` [B, L, H] (after the
        final norm) and, if asked, ``hidden_states`` (embeddings, block outputs; last = ``hidden``)."""
        mask = input_ids > 0
        x = F.embedding(input_ids, self.item_vectors())
        x = self.in_proj(self.drop(x))
        rms = x.pow(2).mean(-1, keepdim=True).add(1e-8).sqrt()
        x = x / rms * self.token_rms
        x = x * mask.unsqueeze(-1).to(x.dtype)
        position_ids = (mask.long().cumsum(1) - 1).clamp(min=0)
        out = self.backbone(
            inputs_embeds=x, attention_mask=mask.long(), position_ids=position_ids,
            use_cache=False, output_hidden_states=output_hidden_states,
        )
        hidden = out.last_hidden_state
        user = self.out_proj(self.drop(hidden))
        if hasattr(self, "collab_model"):  # carry the CF state along: score_items splits it off
            with torch.no_grad():
                cf_state = self.collab_model.encode(input_ids).sequence.to(user.dtype)
            user = torch.cat([user, cf_state], -1)
        result = {"user": user, "hidden": hidden}
        if output_hidden_states:
            result["hidden_states"] = out.hidden_states
        return result

    def normalized_items(self) -> Tensor:
        return F.normalize(self.item_vectors(), dim=-1)

    def score_items(self, user: Tensor, start: int = 0, stop: int | None = None, fuse: bool = True) -> Tensor:
        """Logits of ``user`` [..., d_item (+ d_cf)] against items ``start..stop-1`` (column index =
        item): scale x cosine (+ item bias); with a collaborative model and ``fuse``, mixed with its
        logits: ``alpha * teacher + (1 - alpha) * cf`` (ensemble) or ``teacher + w * cf`` (joint)."""
        items = self.normalized_items()[start:stop]
        cf_state = None
        if hasattr(self, "collab_model"):
            user, cf_state = user[..., :self.item_dim], user[..., self.item_dim:]
        logits = self.logit_scale() * (F.normalize(user, dim=-1) @ items.t())
        if self.hparams.item_bias:
            logits = logits + self.effective_item_bias()[start:stop]
        if cf_state is not None and fuse:
            with torch.no_grad():
                cf_logits = self.collab_model.score(cf_state)[..., start:stop]
            cf_logits = self._gate_collaborative(logits, cf_logits, start, stop)
            if hasattr(self, "collab_weight"):
                logits = logits + self.collab_weight * cf_logits
            else:
                logits = mix_logits(logits, cf_logits, self.fusion_alpha, padding_column=start == 0)
        if start == 0:
            logits = logits.clone()
            logits[..., 0] = -math.inf
        return logits

    def _gate_collaborative(self, teacher: Tensor, cf_logits: Tensor, start: int = 0,
                            stop: int | None = None) -> Tensor:
        """With the cold gate: ``g * cf + (1 - g) * teacher`` (ensemble; a cold item's CF logit is
        replaced by the LLM's) or ``g * cf`` (joint); unchanged without a gate."""
        g = self.cold_gate()
        if g is None:
            return cf_logits
        g = g[start:stop].to(cf_logits)
        if hasattr(self, "collab_weight"):
            return g * cf_logits
        return g * cf_logits + (1 - g) * teacher.masked_fill(torch.isinf(teacher), 0.0)

    # ------------------------------------------------------------------ scores as one dot product
    # (the signal cache stores score_factors per example and score_item_factors per item; see
    # recdistill.teacher.cache_format for the formula)
    def score_factors(self, user: Tensor) -> Tensor:
        """``[..., D]`` with ``score_factors(user) @ score_item_factors().T == score_items(user)`` on
        items ``1..N``: ``[user_llm / |user_llm|, 1 (, cf_state)]``."""
        llm = F.normalize(user[..., :self.item_dim], dim=-1)
        parts = [llm, torch.ones_like(llm[..., :1])]
        if hasattr(self, "collab_model"):
            parts.append(user[..., self.item_dim:])
        return torch.cat(parts, -1)

    def score_item_factors(self, start: int = 0, stop: int | None = None) -> Tensor:
        """``[stop - start, D]``: the item side of :meth:`score_factors` (scale, item bias, fusion
        weight and the collaborative model's affine scoring folded in). Row 0 = padding."""
        items = self.normalized_items()[start:stop]
        bias = (self.effective_item_bias()[start:stop] if self.hparams.item_bias
                else items.new_zeros(items.shape[0]))
        llm = self.logit_scale() * items
        if not hasattr(self, "collab_model"):
            return torch.cat([llm, bias.unsqueeze(-1)], -1)
        cf_w, cf_b = collaborative_score_table(self.collab_model)
        cf_w, cf_b = cf_w[start:stop].to(items), cf_b[start:stop].to(items)
        g = self.cold_gate()
        g = items.new_ones(items.shape[0]) if g is None else g[start:stop].to(items)
        if hasattr(self, "collab_weight"):  # joint: teacher + w * g * cf
            a, c = torch.ones_like(g), self.collab_weight * g
        else:  # ensemble: alpha * teacher + (1 - alpha) * (g * cf + (1 - g) * teacher)
            a = self.fusion_alpha + (1 - self.fusion_alpha) * (1 - g)
            c = (1 - self.fusion_alpha) * g
        a, c = a.unsqueeze(-1), c.unsqueeze(-1)
        return torch.cat([a * llm, a * bias.unsqueeze(-1) + c * cf_b.unsqueeze(-1), c * cf_w], -1)

    def score_blocks(self) -> list[dict[str, Any]]:
        """Column blocks of :meth:`score_factors` (recorded in the signal cache's manifest)."""
        d = self.item_dim
        blocks = [{"name": "llm_cosine", "start": 0, "stop": d,
                   "user": "user_llm / |user_llm|", "item": "w_llm * logit_scale * item / |item|"},
                  {"name": "bias", "start": d, "stop": d + 1, "user": "1", "item": "w_llm * item_bias + w_cf * cf_bias"}]
        if self.hparams.get("cold_gate_count") is not None:
            blocks[0]["cold_gate"] = (f"g_i = min(1, train_count_i / {self.hparams.cold_gate_count}) scales every "
                                      f"per-item part; ensemble per item: w_llm_i = alpha + (1 - alpha) * (1 - g_i), "
                                      f"w_cf_i = (1 - alpha) * g_i; joint: w_cf_i = w * g_i")
        if hasattr(self, "collab_model"):
            d_cf = int(self.collab_model.hidden_size)
            fusion = "joint" if hasattr(self, "collab_weight") else "ensemble"
            w = float(self.collab_weight.detach()) if fusion == "joint" else 1 - float(self.fusion_alpha)
            blocks.append({"name": "collaborative", "start": d + 1, "stop": d + 1 + d_cf, "user": "cf_state",
                           "item": "w_cf * cf_weight", "fusion": fusion, "w_cf": w,
                           "w_llm": 1.0 if fusion == "joint" else float(self.fusion_alpha),
                           "model": type(self.collab_model).__name__})
        else:
            blocks[0]["w_llm"] = 1.0
        return blocks

    def forward(self, input_ids: Tensor) -> Tensor:
        """Next-item logits ``[B, N + 1]`` at the last (predicting) position of left-padded input."""
        return self.score_items(self.encode(input_ids)["user"][:, -1])

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Full-softmax cross-entropy over items at every labelled position (one forward pass)."""
        labels = batch["labels"]
        user = self.encode(batch["input_ids"])["user"]
        sel = labels > 0
        # ensemble fusion: the LLM learns on its own; the mixture weight is chosen on validation
        fuse = not hasattr(self, "fusion_alpha")
        return self.training_loss(user[sel], labels[sel], fuse=fuse)

    def log_popularity(self) -> Tensor:
        """``log q_i`` with ``q_i = (count_i + 1) / sum(count + 1)`` over items 1..N (index 0: 0)."""
        counts = self.item_train_count + 1.0
        q = counts / counts[1:].sum()
        out = q.log()
        out[0] = 0.0
        return out

    def training_loss(self, user: Tensor, labels: Tensor, fuse: bool = True) -> Tensor:
        """Cross-entropy of ``user`` rows ``[M, D]`` against ``labels [M]``, with the training-only options
        (``logq``, ``content_dropout``, ``content_loss_weight``)."""
        hp = self.hparams
        logits = self.score_items(user, fuse=fuse)
        # logit adjustment (Menon et al. 2021): training logits + logq * log q_i, so the scores themselves
        # need not learn popularity, and items never (or rarely) seen are not pushed below everything
        correction = hp.get("logq", 0.0) * self.log_popularity() if hp.get("logq", 0.0) else None
        if correction is not None:
            logits = logits + correction
        p, w = hp.get("content_dropout", 0.0), hp.get("content_loss_weight", 0.0)
        content = None
        if (p > 0 and self.training) or w > 0:
            content = self.score_content(user)
            if correction is not None:
                content = content + correction
        if p > 0 and self.training:
            rows = torch.rand(logits.shape[0], 1, device=logits.device) < p
            logits = torch.where(rows, content, logits)
        loss = F.cross_entropy(logits, labels)
        if w > 0:
            loss = loss + w * F.cross_entropy(content, labels)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True,
                 batch_size=int((batch["labels"] > 0).sum()))
        return loss

    def _accumulator(self):
        from recdistill.metrics import RankingAccumulator

        return RankingAccumulator(ks=self.hparams.eval_ks or [5, 10, 20])

    def on_validation_epoch_start(self) -> None:
        self._val_acc = self._accumulator()
        self._val_mix = {a: self._accumulator() for a in FUSION_GRID} if hasattr(self, "fusion_alpha") else None

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if self._val_mix is None:
            scores = self(batch["input_ids"])
            self._val_acc.update(scores, batch["target"], batch.get("history"), mask_seen=self.hparams.mask_seen)
            return
        user = self.encode(batch["input_ids"])["user"][:, -1]
        teacher = self.score_items(user, fuse=False)
        cf = self._gate_collaborative(teacher, self.collab_model.score(user[..., self.item_dim:]))
        for alpha, acc in self._val_mix.items():
            acc.update(mix_logits(teacher, cf, alpha), batch["target"], batch.get("history"),
                       mask_seen=self.hparams.mask_seen)

    def on_validation_epoch_end(self) -> None:
        if self._val_mix is not None:
            results = self._gathered_mix_metrics()
            if not results:
                return
            best = max(results, key=lambda a: (results[a]["ndcg@10"], a))  # ties: more LLM weight
            self.fusion_alpha.fill_(best)
            self.log("valid/fusion_alpha", float(best), sync_dist=True)
            self.log("valid/llm_ndcg@10", results[1.0]["ndcg@10"], sync_dist=True)
            self.log("valid/collaborative_ndcg@10", results[0.0]["ndcg@10"], sync_dist=True)
            metrics = results[best]
        else:
            if self._val_acc is None or self._val_acc.num_examples == 0:
                return
            metrics = self._val_acc.compute()
        for key, value in metrics.items():
            self.log(f"valid/{key}", value, prog_bar=key == "ndcg@10", sync_dist=True)

    def _gathered_mix_metrics(self) -> dict[float, dict[str, float]]:
        """Validation metrics of every fusion weight over *all* processes' examples (per-rank metric
        sums reduced with ``sum``), so that every rank chooses the same alpha on the whole set."""
        from recdistill.metrics import metrics_from_sums, ranking_metric_sums

        ks = self.hparams.eval_ks or [5, 10, 20]
        alphas = list(self._val_mix)
        sums = torch.cat([ranking_metric_sums(self._val_mix[a].ranks(), ks) for a in alphas])  # [A, 1 + 3k]
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.world_size > 1:
            dtype = torch.float32 if self.device.type == "mps" else torch.float64
            sums = trainer.strategy.reduce(sums.to(self.device, dtype), reduce_op="sum").double().cpu()
        return {a: metrics_from_sums(row, ks) for a, row in zip(alphas, sums) if row[0] > 0}

    def on_test_epoch_start(self) -> None:
        self._test_acc = self._accumulator()

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        scores = self(batch["input_ids"])
        self._test_acc.update(scores, batch["target"], batch.get("history"), mask_seen=self.hparams.mask_seen)

    def on_test_epoch_end(self) -> None:
        if self._test_acc is None or self._test_acc.num_examples == 0:
            return
        for key, value in self._test_acc.compute().items():
            self.log(f"test/{key}", value, sync_dist=True)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        from recdistill.teacher.emit import predict_signals

        if self.emit_config is None:
            return {"scores": self(batch["input_ids"])}
        return predict_signals(self, batch, **self.emit_config)

    def configure_optimizers(self):
        hp = self.hparams
        item_params, decay, no_decay = [], [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith(("item_emb", "item_residual", "item_bias")):
                item_params.append(p)
            elif name == "log_scale" or name.endswith("bias"):
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [
            {"params": decay, "weight_decay": hp.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if item_params:
            groups.append({
                "params": item_params,
                "lr": hp.item_lr if hp.item_lr is not None else hp.lr,
                "weight_decay": hp.item_weight_decay if hp.item_weight_decay is not None else hp.weight_decay,
            })
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.lr)

    # ------------------------------------------------------------------ parameters
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def head_state_dict(self) -> dict[str, Tensor]:
        """Everything outside the frozen base and the LoRA adapter (tables, projections, scale)."""
        return {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()
                if not k.startswith("backbone.")}

    def adapter_state_dict(self) -> dict[str, Tensor]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(self.backbone).items()}

    def trained_state_hash(self) -> str:
        """sha256 over adapter + head weights: identifies the trained teacher (signals manifest)."""
        tensors = {f"adapter.{k}": v for k, v in self.adapter_state_dict().items()}
        tensors.update({f"head.{k}": v for k, v in self.head_state_dict().items()})
        return _state_hash(tensors)

    # Lightning checkpoints (for resuming a fit) hold only what training changes; the frozen base
    # is rebuilt from its source, so loading is non-strict but checked to cover every trained key.
    strict_loading = False

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if is_trained_key(k)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        missing = sorted(k for k in self.state_dict() if is_trained_key(k) and k not in checkpoint["state_dict"])
        if missing:
            from recdistill.errors import CheckpointError

            raise CheckpointError(f"teacher checkpoint lacks trained weights {missing[:5]} (of {len(missing)}): "
                                  f"it was written by a different teacher configuration or dataset; use another "
                                  f"--output-dir or run without --resume")

    def init_args(self) -> dict[str, Any]:
        import inspect

        accepted: set[str] = set()
        for klass in type(self).__mro__:  # a subclass may pass parent args through **kwargs
            if issubclass(klass, HLLMTeacher):
                params = inspect.signature(klass.__init__).parameters.values()
                accepted |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        accepted.discard("self")
        args = {k: v for k, v in dict(self.hparams).items() if k in accepted}  # drops LightningCLI's extras
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
        args = self.init_args()
        meta = {
            "format_version": FORMAT_VERSION,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "init_args": args,
            "item_dim": self.item_dim,
            "collab_dim": int(self.item_collab_emb.shape[1]) if hasattr(self, "item_collab_emb") else None,
            "collab_model": ({"name": self.collab_model.registry_name, "init_args": self.collab_model.init_args}
                             if hasattr(self, "collab_model") else None),
            "base_model": self.base_ref.to_dict(),
            "base_model_needs_remote_code": bool(self.hparams.get("trust_remote_code", False)),  # informational only
            "dataset_fingerprint": self.dataset_fingerprint,
            "trained_state_sha256": self.trained_state_hash(),
        }

        with atomic_directory(directory) as tmp:
            self.backbone.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
            save_file(self.head_state_dict(), str(tmp / "head.safetensors"), metadata={"format": "pt"})
            (tmp / "teacher.json").write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
        return Path(directory)

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, check_base: bool = True, trust_remote_code: bool = False,
                        **overrides: Any) -> "HLLMTeacher":
        """Rebuild a teacher saved by :meth:`save_pretrained`, reloading the base from its source.

        ``teacher.json`` is untrusted input (see :mod:`recdistill.teacher.checkpoint`): code-executing
        loader options come only from ``trust_remote_code`` here, file paths in it are not followed, a hub
        base is reloaded at the recorded commit, and the base weights and the trained weights are checked
        against their recorded sha256 (a check that cannot be made raises ``BaseModelCheckWarning``).
        """
        from peft import set_peft_model_state_dict

        from recdistill.errors import CheckpointError
        from recdistill.teacher.checkpoint import (
            check_base_model, check_trained_state, constructor_args, read_teacher_json,
        )

        directory = Path(directory)
        meta = read_teacher_json(directory)
        args = constructor_args(cls, meta, directory, overrides)
        args["trust_remote_code"] = bool(trust_remote_code)
        num_items = int(args["num_items"])
        for name in ("adapter_model.safetensors", "head.safetensors"):
            if not (directory / name).is_file():
                raise CheckpointError(f"teacher checkpoint {directory} lacks {name}; re-run `recdistill teacher fit`")
        module = cls(**args, item_embeddings=torch.zeros(num_items, int(meta["item_dim"])))
        module.collaborative_source = meta["init_args"].get("collaborative_embeddings")  # informational only
        module.collaborative_model_source = meta["init_args"].get("collaborative_model")
        check_base_model(BaseModelRef.from_dict(meta["base_model"]), module.base_ref, directory, check=check_base)
        try:
            adapter = load_file(str(directory / "adapter_model.safetensors"))
            head = load_file(str(directory / "head.safetensors"))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a corrupt header
            raise CheckpointError(f"cannot read the weights in {directory}: {exc}") from None
        result = set_peft_model_state_dict(module.backbone, adapter)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise CheckpointError(f"adapter in {directory} has unexpected keys: {unexpected[:5]}")
        try:
            missing, unexpected = module.load_state_dict(head, strict=False)
        except RuntimeError as exc:  # shape mismatch
            raise CheckpointError(f"head weights in {directory / 'head.safetensors'} do not fit teacher.json: "
                                  f"{str(exc).splitlines()[-1].strip()}") from None
        missing = [k for k in missing if not k.startswith("backbone.")]
        if missing or unexpected:
            raise CheckpointError(f"head weights in {directory} do not match: missing {missing}, "
                                  f"unexpected {unexpected}")
        check_trained_state(module, meta, directory)
        module.dataset_fingerprint = meta.get("dataset_fingerprint")
        module.eval()
        return module


def load_item_embedding_file(path: str | Path) -> Tensor:
    """Load ``Float[N, d]`` item embeddings from .safetensors / .npy / .pt (weights_only)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors = load_file(str(path))
        for key in ("item_text_embeddings", "item_embeddings", "embeddings"):
            if key in tensors:
                return tensors[key].float()
        if len(tensors) == 1:
            return next(iter(tensors.values())).float()
        raise KeyError(f"{path} has no 'item_text_embeddings' tensor (has {sorted(tensors)})")
    if path.suffix == ".npy":
        import numpy as np

        return torch.from_numpy(np.load(path, allow_pickle=False)).float()
    if path.suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(obj, Tensor):
            raise TypeError(f"{path} does not hold a single tensor")
        return obj.float()
    raise ValueError(f"unsupported item embedding file {path} (use .safetensors, .npy or .pt)")


def reinitialize_layers(model: nn.Module, seed: int = 0) -> None:
    """Re-draw the decoder layers and final norm of a causal LM with its own ``_init_weights``
    under a fixed seed (deterministic, independent of the global RNG)."""
    inner = model.model
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in [*inner.layers.modules(), *inner.norm.modules()]:
            model._init_weights(module)


def load_teacher(directory: str | Path, *, trust_remote_code: bool = False, **overrides: Any) -> L.LightningModule:
    """Load any teacher checkpoint by the class recorded in its ``teacher.json``, which must be a registered
    teacher class (``recdistill.teacher.checkpoint.TEACHER_CLASSES``); ``trust_remote_code`` only from here."""
    from recdistill.teacher.checkpoint import read_teacher_json, teacher_class

    meta = read_teacher_json(directory)
    cls = teacher_class(meta, directory)
    return cls.from_pretrained(directory, trust_remote_code=trust_remote_code, **overrides)


def is_trained_key(name: str) -> bool:
    """State-dict keys that training changes: everything but the frozen base (LoRA included)."""
    return not name.startswith("backbone.") or "lora_" in name


def copy_trainable_state(module: nn.Module) -> dict[str, Tensor]:
    """CPU copy of every trainable parameter (and item buffers) for best-epoch restore."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if is_trained_key(k)}


def restore_trainable_state(module: nn.Module, state: dict[str, Tensor]) -> None:
    module.load_state_dict(copy.copy(state), strict=False)
