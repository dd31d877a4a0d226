"""The HLLM teacher's model: item table, cold-item gate, sequence encoding, scoring and losses.

A mixin of :class:`~recdistill.teacher.hllm.HLLMTeacher` (which builds the modules and buffers it
reads: ``backbone``, ``item_emb`` / ``item_text_emb`` / ``item_residual``, ``in_proj``, ``out_proj``,
``log_scale``, the optional collaborative parts); pure torch, no Lightning.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from recdistill.teacher.checkpoint import state_hash
from recdistill.teacher.collaborative import collaborative_score_table, mix_logits


class HLLMModelMixin:
    """Encoding, item vectors, scoring (and its dot-product factors), the cold gate and the losses."""

    # ------------------------------------------------------------------ cold items
    def cold_gate(self) -> Tensor | None:
        """``g [N + 1] = min(1, count / cold_gate_count)`` (0 for items never seen in training), or None."""
        c = self.hparams.get("cold_gate_count")
        if c is None:
            return None
        return (self.item_train_count / float(c)).clamp(max=1.0)

    def collaborative_gate(self) -> Tensor | None:
        """The gate of the collaborative logits: ``min(1, count / c_cf)`` with the chosen
        ``collab_gate_count`` when the teacher searches it, else :meth:`cold_gate`."""
        if not hasattr(self, "collab_gate_count"):
            return self.cold_gate()
        return (self.item_train_count / self.collab_gate_count).clamp(max=1.0)

    def mixture_active(self) -> bool:
        """Whether scores go through the chosen slice mixture (chosen after fitting; never in training)."""
        return hasattr(self, "mixture_pi") and not bool(torch.isnan(self.mixture_pi)) and not self.training

    def mixture_content(self) -> Tensor:
        """``Bool[N + 1]``: the items the slice mixture scores with its content expert."""
        from recdistill.teacher.slice_mixture import content_slice

        return content_slice(self.item_train_count, float(self.mixture_max_count))

    def _mixed(self, logits: Tensor) -> Tensor:
        from recdistill.teacher.slice_mixture import apply_slice_mixture

        return apply_slice_mixture(logits, self.mixture_content(), float(self.mixture_tau), float(self.mixture_pi))

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

    def score_items(self, user: Tensor, start: int = 0, stop: int | None = None, fuse: bool = True,
                    mixture: bool = True) -> Tensor:
        """Logits of ``user`` [..., d_item (+ d_cf)] against items ``start..stop-1`` (column index =
        item): scale x cosine (+ item bias); with a collaborative model and ``fuse``, mixed with its
        logits: ``alpha * teacher + (1 - alpha) * cf`` (ensemble) or ``teacher + w * cf`` (joint).
        With ``fuse`` and a chosen slice mixture (``mixture``), its log-probabilities instead (they
        need every item: a column range is cut from the full row)."""
        if fuse and mixture and self.mixture_active():
            return self._mixed(self.score_items(user, fuse=True, mixture=False))[..., start:stop]
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
                            stop: int | None = None, gate: Tensor | None = None) -> Tensor:
        """With the cold gate: ``g * cf + (1 - g) * teacher`` (ensemble; a cold item's CF logit is
        replaced by the LLM's) or ``g * cf`` (joint); unchanged without a gate. ``g`` =
        :meth:`collaborative_gate` unless ``gate`` (``[N + 1]``, the validation search) is given."""
        g = self.collaborative_gate() if gate is None else gate
        if g is None:
            return cf_logits
        g = g[start:stop].to(cf_logits)
        if hasattr(self, "collab_weight"):
            return g * cf_logits
        return g * cf_logits + (1 - g) * teacher.masked_fill(torch.isinf(teacher), 0.0)

    def fusion_grid(self) -> list[tuple[float, float | None]]:
        """The ``(alpha, c_cf)`` pairs an ensemble teacher searches on validation (``c_cf`` None: the
        teacher's own gate): every LLM weight of ``FUSION_GRID`` for every ``collaborative_gate_counts``."""
        from recdistill.teacher.collaborative import FUSION_GRID

        counts = self.hparams.get("collaborative_gate_counts") if hasattr(self, "collab_gate_count") else None
        return [(a, None if counts is None else float(c)) for c in (counts or [None]) for a in FUSION_GRID]

    def fused_grid(self, teacher: Tensor, raw_cf: Tensor):
        """``((alpha, c_cf), logits)`` for every point of :meth:`fusion_grid`: what :meth:`score_items`
        returns over all items with ``fusion_alpha = alpha`` and ``collab_gate_count = c_cf``, from the
        LLM part's logits ``teacher`` (``fuse=False``) and the collaborative model's raw logits
        ``raw_cf``; each gate is applied once, not once per alpha."""
        gated: dict[float | None, Tensor] = {}
        for alpha, count in self.fusion_grid():
            if count not in gated:
                gate = None if count is None else (self.item_train_count / count).clamp(max=1.0)
                gated[count] = self._gate_collaborative(teacher, raw_cf, gate=gate)
            yield (alpha, count), mix_logits(teacher, gated[count], alpha)

    # ------------------------------------------------------------------ scores as one dot product
    # (the signal cache stores score_factors per example and score_item_factors per item; see
    # recdistill.teacher.cache_format for the formula)
    def score_factors(self, user: Tensor) -> Tensor:
        """``[..., D]`` with ``score_factors(user) @ score_item_factors().T == score_items(user)`` on
        items ``1..N``: ``[user_llm / |user_llm|, 1 (, cf_state) (, off_content, off_rest)]`` (the
        last two: the slice mixture's per-user offsets, when one is chosen)."""
        llm = F.normalize(user[..., :self.item_dim], dim=-1)
        parts = [llm, torch.ones_like(llm[..., :1])]
        if hasattr(self, "collab_model"):
            parts.append(user[..., self.item_dim:])
        if self.mixture_active():
            from recdistill.teacher.slice_mixture import mixture_offsets

            logits = self.score_items(user, mixture=False)
            off_c, off_w = mixture_offsets(logits, self.mixture_content().to(logits.device),
                                           float(self.mixture_tau), float(self.mixture_pi))
            parts += [off_c.unsqueeze(-1).to(llm), off_w.unsqueeze(-1).to(llm)]
        return torch.cat(parts, -1)

    def score_item_factors(self, start: int = 0, stop: int | None = None) -> Tensor:
        """``[stop - start, D]``: the item side of :meth:`score_factors` (scale, item bias, fusion
        weight and the collaborative model's affine scoring folded in; with a slice mixture the
        content items' rows over ``tau`` and the two slice indicators). Row 0 = padding."""
        rows = self._fused_item_factors(start, stop)
        if not self.mixture_active():
            return rows
        content = self.mixture_content()[start:stop].to(rows)
        rest = 1.0 - content
        if start == 0:
            rest[0] = 0.0  # padding belongs to neither slice
        rows = rows * (1.0 + content * (1.0 / float(self.mixture_tau) - 1.0)).unsqueeze(-1)
        return torch.cat([rows, content.unsqueeze(-1), rest.unsqueeze(-1)], -1)

    def _fused_item_factors(self, start: int = 0, stop: int | None = None) -> Tensor:
        items = self.normalized_items()[start:stop]
        bias = (self.effective_item_bias()[start:stop] if self.hparams.item_bias
                else items.new_zeros(items.shape[0]))
        llm = self.logit_scale() * items
        if not hasattr(self, "collab_model"):
            return torch.cat([llm, bias.unsqueeze(-1)], -1)
        cf_w, cf_b = collaborative_score_table(self.collab_model)
        cf_w, cf_b = cf_w[start:stop].to(items), cf_b[start:stop].to(items)
        g = self.collaborative_gate()
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
            if hasattr(self, "collab_gate_count"):
                blocks[0]["cold_gate"] += (f"; in w_llm_i / w_cf_i, g_i = min(1, train_count_i / "
                                           f"{float(self.collab_gate_count):g}) (chosen on validation)")
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
        if self.mixture_active():
            d_all = blocks[-1]["stop"]
            c0, tau, pi = float(self.mixture_max_count), float(self.mixture_tau), float(self.mixture_pi)
            blocks.append({"name": "slice_mixture", "start": d_all, "stop": d_all + 2,
                           "user": f"[log {pi:g} - logsumexp_C(l / {tau:g}), log {1 - pi:g} - logsumexp_W(l)]",
                           "item": f"[1(i in C), 1(i in W)]; C = items with < {c0:g} training interactions, "
                                   f"W = the rest; the rows of C in every block above are divided by {tau:g}",
                           "max_count": c0, "tau": tau, "pi": pi,
                           "definition": "l = the fused logits of the blocks above (see "
                                         "recdistill.teacher.slice_mixture)"})
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
        return state_hash(tensors)

    @property
    def device(self) -> torch.device:
        """Where the teacher's trained weights live."""
        return self.log_scale.device
