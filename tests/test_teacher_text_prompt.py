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
from recdistill.teacher.lightning_module import TeacherLightningModule
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
    task = TeacherLightningModule(teacher)
    before = trainer.validate(task, dm, verbose=False)[0]["valid/ndcg@10"]
    trainer.fit(task, dm)
    after = trainer.validate(task, dm, verbose=False)[0]["valid/ndcg@10"]
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


def test_text_prompt_teacher_from_the_cli(tmp_path, monkeypatch):
    """The packaged recipe (``class_path: recdistill.teacher.TextPromptTeacher``) fits, evaluates
    and emits through ``recdistill teacher``, shrunk to a tiny llama and a small CSV by overrides."""
    import json
    from pathlib import Path

    import yaml

    from recdistill.cli import main
    from recdistill.data import load_split, synthetic_interactions

    monkeypatch.setenv("RECDISTILL_CACHE", str(tmp_path / "cache"))
    csv = tmp_path / "events.csv"
    synthetic_interactions(30, 15, mean_length=10, seed=2).interactions[["user_id", "item_id", "timestamp"]].to_csv(
        csv, index=False)
    split = load_split(str(csv))
    recipe = yaml.safe_load(Path(__file__).parents[1].joinpath("recipes/ml100k_teacher_text_prompt.yaml").read_text())
    assert recipe["model"]["class_path"] == "recdistill.teacher.TextPromptTeacher"
    words = " ".join([recipe["model"]["init_args"][k] for k in ("prompt_prefix", "prompt_suffix")])
    tiny = make_tiny_llama(tmp_path / "tiny", texts=split.item_text + [words], num_layers=2)
    out = tmp_path / "run"
    common = ["--config", "ml100k_teacher_text_prompt", "--output-dir", str(out),
              "--data.dataset", str(csv), "--data.max_len", "6", "--data.batch_size", "8",
              "--model.init_args.base_model", str(tiny), "--model.num_layers", "2",  # both override forms
              "--model.init_args.max_history_items", "4", "--model.init_args.title_max_tokens", "4",
              "--model.init_args.progress", "false"]
    trainer = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.accelerator", "cpu",
               "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    assert main(["teacher", "fit", *common, *trainer]) == 0
    meta = json.loads((out / "adapter" / "teacher.json").read_text())
    assert meta["class"] == "recdistill.teacher.text_prompt.TextPromptTeacher"
    args = meta["init_args"]
    assert (args["num_layers"], args["max_history_items"], args["title_max_tokens"]) == (2, 4, 4)
    assert args["num_items"] == split.num_items and args["lora_dropout"] == 0.1  # linked / from the recipe
    assert meta["dataset_fingerprint"] == split.fingerprint
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["class_path"].endswith("TextPromptTeacher")
    assert isinstance(load_teacher(out / "adapter"), TextPromptTeacher)

    assert main(["teacher", "eval", *common, "--eval.latency_users", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for which in ("valid", "test"):
        assert 0.0 <= metrics[which]["ndcg@10"] <= metrics[which]["hr@10"] <= 1.0
    assert metrics["latency"]["p50_ms"] > 0

    assert main(["teacher", "emit", *common, "--emit.layers", "[1, 2]", "--emit.k", "5",
                 "--emit.train_every", "3", "--emit.batch_size", "16"]) == 0
    manifest = json.loads((out / "signals" / "manifest.json").read_text())
    assert manifest["train_stride"] == 1 and manifest["layers"] == [1, 2]
    reader = TeacherSignals(out / "signals", split=split)
    reader.verify()
    assert reader.k == 5 and reader.num_items == split.num_items
    assert list(reader.example_ids("test")) == list(split.example_ids("test"))
    n = len(split.example_ids("test"))
    got = reader.get(reader.example_ids("test"), keys=("hidden", "layers", "topk_items", "topk_scores"))
    assert got["hidden"].shape == (n, 32) and got["layers"].shape == (n, 2, 32)
    assert got["topk_items"].shape == (n, 5) and got["topk_scores"].shape == (n, 5)
    assert torch.equal(got["layers"][:, -1], got["hidden"])  # last index = after the final norm
