"""Text-prompt teacher (history titles as tokens, last-token state): fit, round trip, emission."""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch

from recdistill.data import EXAMPLE_STRIDE, SequentialDataModule
from recdistill.teacher.cache_reader import TeacherSignals
from recdistill.teacher.hllm import load_teacher
from recdistill.teacher.signals import emit_signals
from recdistill.teacher.testing import make_tiny_llama, planted_split
from recdistill.teacher.text_prompt import TextPromptTeacher

warnings.filterwarnings("ignore", ".*does not have many workers.*")


def test_text_prompt_teacher(tmp_path):
    split = planted_split(num_users=60, num_items=20, mean_length=12, seed=0)
    words = "a user watched these movies in order the next movie will watch is"
    tiny = make_tiny_llama(tmp_path / "tiny", texts=split.item_text + [words], num_layers=2)
    torch.manual_seed(0)
    teacher = TextPromptTeacher(num_items=split.num_items, item_text=split.item_text, base_model=str(tiny),
                                num_layers=2, lr=5e-3, dropout=0.0, max_history_items=6, title_max_tokens=4,
                                embedding_cache_dir=str(tmp_path / "emb"), progress=False)
    dm = SequentialDataModule.from_split(split, max_len=8, batch_size=16, eval_batch_size=32)
    batch = next(iter(dm.dataloader("valid")))
    ids, mask = teacher.build_prompts(batch["input_ids"][:1])
    assert ids.shape[1] <= len(teacher.prefix_ids) + 6 * (4 + len(teacher.sep_ids)) + len(teacher.suffix_ids)
    trainer = L.Trainer(max_epochs=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    before = trainer.validate(teacher, dm, verbose=False)[0]["valid/ndcg@10"]
    trainer.fit(teacher, dm)
    after = trainer.validate(teacher, dm, verbose=False)[0]["valid/ndcg@10"]
    assert after > max(0.6, before + 0.2), (before, after)

    teacher.eval()
    path = teacher.save_pretrained(tmp_path / "ckpt")
    again = load_teacher(path)
    assert isinstance(again, TextPromptTeacher)
    with torch.no_grad():
        assert torch.equal(teacher(batch["input_ids"]), again(batch["input_ids"]))

    out = emit_signals(teacher, dm, tmp_path / "signals", k=5, layers=[1], shard_size=200,
                       trainer_kwargs={"enable_progress_bar": False})
    reader = TeacherSignals(out, split=split)
    assert len(reader) == sum(len(split.example_ids(s)) for s in ("train", "valid", "test"))
    eids = list(split.example_ids("train")[::37]) + list(split.example_ids("test")[:5])
    got = reader.get(eids, keys=("topk_items",))["topk_items"]
    for row, eid in zip(got, eids):
        u, p = divmod(int(eid), EXAMPLE_STRIDE)
        seq = split.sequences[u]
        with torch.no_grad():
            s = teacher(torch.tensor(seq[max(0, p - 8):p]).unsqueeze(0))[0].clone()
        s[torch.tensor(seq[: p + 1])] = -math.inf  # history masked, target excluded
        s[0] = -math.inf
        assert torch.equal(row.long(), torch.topk(s, 5).indices)
    with pytest.raises(ValueError, match="train_stride=1"):
        emit_signals(teacher, dm, tmp_path / "s2", k=5, train_stride=4)
