"""A seconds-long run recipe (synthetic data, tiny Llama) for tests and the walkthrough notebook."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import yaml

from recdistill.atomic import write_text


def write_tiny_run(folder: str | Path, *, num_users: int = 60, num_items: int = 30, seeds: Sequence[int] = (0,),
                   seed: int = 3) -> Path:
    """A seconds-long run recipe for tests and the walkthrough notebook: synthetic interactions
    written as a CSV file, a random-init tiny Llama as the LLM (``teacher.testing.make_tiny_llama``),
    a hybrid teacher on a 16-wide SASRec, DLLM2Rec distillation, prune + recover + ONNX int8,
    export and a short profile. Writes the stage recipes and ``run.yaml`` into ``folder``; returns
    the run recipe's path. Numbers from it mean nothing beyond "the pipeline works"."""
    from recdistill.data import load_split, synthetic_interactions
    from recdistill.teacher.testing import make_tiny_llama

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "events.csv"
    synthetic_interactions(num_users, num_items, mean_length=12, seed=seed, pattern_strength=0.9) \
        .interactions[["user_id", "item_id", "timestamp"]].to_csv(csv, index=False)
    llama = make_tiny_llama(folder / "tiny-llama", texts=load_split(str(csv)).item_text, num_layers=2)
    quiet = {"accelerator": "cpu", "devices": 1, "enable_progress_bar": False, "enable_model_summary": False,
             "log_every_n_steps": 1}
    student = {
        "seed_everything": 0,
        "data": {"dataset": str(csv), "max_len": 8, "batch_size": 32, "eval_batch_size": 64},
        "model": {"student": {"class_path": "recdistill.student.SASRec",
                              "init_args": {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "dropout": 0.1,
                                            "max_len": 8}},
                  "lr": 0.005, "weight_decay": 0.0, "mask_seen": True},
        "trainer": {"max_epochs": 3, **quiet, "enable_progress_bar": True,  # a silent bar (refresh 0)
                    "callbacks": [{"class_path": "lightning.pytorch.callbacks.TQDMProgressBar",
                                   "init_args": {"refresh_rate": 0}}]},
        "early_stopping_patience": 3,
    }
    teacher = {
        "seed_everything": 0,
        "data": {"dataset": str(csv), "max_len": 8, "batch_size": 16, "eval_batch_size": 64},
        "model": {"base_model": str(llama), "num_layers": 2, "lr": 0.005, "item_table": "frozen", "item_bias": True,
                  "progress": False},
        "trainer": {"max_epochs": 1, **quiet},
        "emit": {"k": 10, "layers": [1], "shard_size": 1000, "train_every": 2},
        "eval": {"latency_users": 5},
    }
    distill = {**student, "model": {**student["model"], "signals": "(set by the runner)",
                                    "terms": [{"name": "dllm2rec", "weight": 0.8, "top_k": 5,
                                               "params": {"beta": 1.0, "gamma": [0.3, 0.5, 0.1],
                                                          "distance": "cosine", "student_output": "softmax"}}],
                                    "embedding_fusion": {"w_ed": 0.25}}}
    compress = {
        "data": {"dataset": str(csv), "max_len": 8, "batch_size": 32, "eval_batch_size": 64,
                 "eval_split": "test", "calibration_split": "valid", "calibration_batches": 2},
        "gate": {"min_top10_overlap": 0.5, "max_ndcg_drop": 0.5},
        "latency": {"batch_size": 1, "runs": 5, "threads": 1},
        "steps": {"prune": {"ratio": 0.5}, "recover": {"epochs": 1},
                  "onnx": {"dynamic_int8": True, "static_int8": False, "fp16": False, "item_table": [],
                           "pruned_int8": True}},
    }
    for name, recipe in (("student", student), ("teacher", teacher), ("distill", distill), ("compress", compress)):
        write_text(folder / f"{name}.yaml", yaml.safe_dump(recipe, sort_keys=False))
    run = {
        "name": "tiny", "dataset": str(csv), "assets": [], "seeds": list(seeds), "threads": None,
        "student": {"recipe": "student.yaml"}, "teacher": {"recipe": "teacher.yaml", "hybrid": True},
        "distill": {"recipe": "distill.yaml"}, "compress": {"recipe": "compress.yaml"},
        "export": {"serving": False},
        "profile": {"batch_sizes": [1, 16], "threads": [1], "warmup": 1, "min_iters": 3, "min_seconds": 0.0},
    }
    path = folder / "run.yaml"
    write_text(path, yaml.safe_dump(run, sort_keys=False))
    return path
