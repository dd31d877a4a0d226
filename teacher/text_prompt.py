"""Text-prompt teacher (BIGRec / LEADER style, discriminative head): the user's history is written
as item titles in a prompt, the LLM (LoRA on q/k/v/o) reads it, and the last token's state is
projected and scored against the item table (learnable scale x cosine), trained with full-softmax
cross-entropy over the catalogue. One prediction per prompt, so it is far costlier than
:class:`~recdistill.teacher.hllm.HLLMTeacher` (meant for GPU users); everything else (item table,
checkpoint format, emission, evaluation) is shared with it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from recdistill.teacher.hllm import HLLMTeacher
from recdistill.teacher.item_encoder import tokenize_texts


class TextPromptTeacher(HLLMTeacher):
    """LLM over a text prompt of history titles; last-token state -> item logits.

    Extra args: ``prompt_prefix`` / ``prompt_suffix`` / ``item_separator`` (prompt template),
    ``title_max_tokens`` (tokens kept per item title), ``max_history_items`` (most recent items
    written into the prompt). ``num_layers`` defaults to the whole base model. Training samples one
    random labelled position per sequence and step. Other args: see ``HLLMTeacher``.
    """

    _needs_tokenizer = True
    _keep_token_embeddings = True
    _uses_item_inputs = False
    last_position_only = True

    def __init__(
        self,
        num_items: int,
        item_text: list[str] | None = None,
        item_embeddings: Any = None,
        base_model: str = "smollm2-135m",
        num_layers: int = 30,
        prompt_prefix: str = "A user watched these movies in order: ",
        prompt_suffix: str = ". The next movie the user will watch is:",
        item_separator: str = "; ",
        title_max_tokens: int = 16,
        max_history_items: int = 20,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_items=num_items, item_text=item_text, item_embeddings=item_embeddings,
                         base_model=base_model, num_layers=num_layers, **kwargs)
        tok = self._tokenizer
        if tok is None:
            raise ValueError(f"base model {base_model!r} has no tokenizer; pass tokenizer=")
        encode = lambda text: tokenize_texts(tok, [text], 10_000)[0] if text else []  # noqa: E731
        self.prefix_ids = encode(prompt_prefix)
        self.suffix_ids = encode(prompt_suffix)
        self.sep_ids = encode(item_separator)
        self.pad_id = int(getattr(tok, "pad_token_id", None) or 0)
        tokens = torch.zeros(num_items + 1, title_max_tokens, dtype=torch.long)
        lengths = torch.zeros(num_items + 1, dtype=torch.long)
        if item_text is not None:
            for i, ids in enumerate(tokenize_texts(tok, list(item_text), title_max_tokens), start=1):
                tokens[i, : len(ids)] = torch.tensor(ids)
                lengths[i] = len(ids)
        self.register_buffer("item_tokens", tokens, persistent=True)  # restored by from_pretrained
        self.register_buffer("item_token_len", lengths, persistent=True)

    def build_prompts(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Token ids + attention mask (left-padded) of the prompts for left-padded item inputs."""
        rows: list[list[int]] = []
        tokens, lengths = self.item_tokens.cpu(), self.item_token_len.cpu()
        for seq in input_ids.detach().cpu():
            items = seq[seq > 0][-self.hparams.max_history_items:].tolist()
            ids = list(self.prefix_ids)
            for j, item in enumerate(items):
                if j:
                    ids.extend(self.sep_ids)
                ids.extend(tokens[item, : lengths[item]].tolist())
            ids.extend(self.suffix_ids)
            rows.append(ids)
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, r in enumerate(rows):
            out[b, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[b, width - len(r):] = 1
        return out.to(input_ids.device), mask.to(input_ids.device)

    def encode(self, input_ids: Tensor, output_hidden_states: bool = False) -> dict[str, Any]:
        """States at the prompt's last token: ``user`` [B, 1, d_item], ``hidden`` [B, 1, H]."""
        ids, mask = self.build_prompts(input_ids)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        out = self.backbone(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
                            output_hidden_states=output_hidden_states)
        hidden = out.last_hidden_state[:, -1:]
        result = {"user": self.out_proj(self.drop(hidden)), "hidden": hidden}
        if output_hidden_states:
            result["hidden_states"] = tuple(h[:, -1:] for h in out.hidden_states)
        return result

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Cross-entropy at one random labelled position per sequence (its prefix as the prompt)."""
        input_ids, labels = batch["input_ids"], batch["labels"]
        cut_inputs, targets = [], []
        width = input_ids.shape[1]
        for b in range(input_ids.shape[0]):
            positions = torch.nonzero(labels[b] > 0).flatten()
            if positions.numel() == 0:
                continue
            p = int(positions[torch.randint(positions.numel(), (1,)).item()])
            row = torch.zeros(width, dtype=input_ids.dtype, device=input_ids.device)
            row[width - 1 - p:] = input_ids[b, : p + 1]
            cut_inputs.append(row)
            targets.append(labels[b, p])
        if not cut_inputs:
            raise ValueError("batch has no labelled positions")
        user = self.encode(torch.stack(cut_inputs))["user"][:, -1]
        return F.cross_entropy(self.score_items(user), torch.stack(targets))
