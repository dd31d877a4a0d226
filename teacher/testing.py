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


def planted_oracle_cache(split, directory: str | Path, *, num_items: int, seed: int, k: int = 5, every: int = 1,
                         scores: bool = True) -> Path:
    """A signal cache (train split) of a teacher that knows the planted successor of every item
    (the generator's own map, :func:`~recdistill.data.synthetic.planted_successor`) and fills the
    rest of its top-``k`` with the most frequent followers in the training part. ``every``: keep one
    training position in ``every``; ``scores``: also store ``topk_scores`` (5 down to 1)."""
    from recdistill.data import EXAMPLE_STRIDE
    from recdistill.data.synthetic import planted_successor
    from recdistill.teacher.cache_writer import write_cache

    index_of = {int(raw): i + 1 for i, raw in enumerate(split.item_ids)}
    successor = planted_successor(num_items, seed)
    follow = torch.zeros(split.num_items + 1, split.num_items + 1)
    for seq in split.sequences:
        for a, b in zip(seq[:-3], seq[1:-2]):
            follow[a, b] += 1
    ids, top = [], []
    for user, seq in enumerate(split.sequences):
        for pos in range(1, len(seq) - 2):
            if (user + pos) % every:
                continue
            first = index_of.get(int(successor[int(split.item_ids[seq[pos - 1] - 1])]), 0)
            rest = [int(i) for i in torch.argsort(-follow[seq[pos - 1]], stable=True) if int(i) not in (0, first)]
            ids.append(user * EXAMPLE_STRIDE + pos)
            top.append(([first] if first else []) + rest[: k - (1 if first else 0)])
    rows = {"example_id": torch.tensor(ids), "topk_items": torch.tensor(top, dtype=torch.int32)}
    if scores:
        rows["topk_scores"] = torch.linspace(5, 1, k).repeat(len(ids), 1)
    return write_cache(directory, {"train": rows}, split=split, teacher={"kind": "oracle"},
                       item_tables={"item_embeddings": torch.randn(split.num_items + 1, 8)})
