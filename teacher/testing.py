"""Tiny offline stand-ins for tests and demos: a random-init llama folder with a word tokenizer,
and a small planted-pattern split. Nothing here downloads anything."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch


def make_tiny_llama(
    folder: str | Path,
    *,
    texts: Sequence[str] = (),
    vocab_size: int = 128,
    hidden_size: int = 32,
    num_layers: int = 3,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 64,
    seed: int = 0,
) -> Path:
    """Save a random-init ``LlamaForCausalLM`` plus a word-level fast tokenizer to ``folder``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    for t in texts:
        for w in t.lower().replace(".", " ").replace(",", " ").replace(":", " ").split():
            counts[w] = counts.get(w, 0) + 1
    words = sorted(counts, key=lambda w: (-counts[w], w))[: max(vocab_size - 3, 0)]
    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2}
    vocab.update({w: i + 3 for i, w in enumerate(words)})
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = None
    from tokenizers import normalizers

    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>")
    fast.save_pretrained(folder)

    cfg = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        max_position_embeddings=256, pad_token_id=0, bos_token_id=2, eos_token_id=2, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder, safe_serialization=True)
    return folder


def planted_split(num_users: int = 60, num_items: int = 30, mean_length: float = 16, seed: int = 0,
                  pattern_strength: float = 0.9):
    """A small :class:`~recdistill.data.SequentialSplit` with a planted successor pattern."""
    from recdistill.data import build_sequential_split, synthetic_interactions

    inter = synthetic_interactions(num_users, num_items, mean_length=mean_length, seed=seed,
                                   pattern_strength=pattern_strength)
    return build_sequential_split(inter)
