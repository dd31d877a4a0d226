"""Student and teacher fits with 2 CPU processes (Lightning ``strategy="ddp"``, gloo) select the same
epoch, with the same validation metrics, test metrics, weights and fusion weight, as one process.

What makes the two runs train identically (not only similarly): the data module hands rank ``r`` the
share ``order[r::2]`` of the one-process epoch order (``RankShardSampler``), so with ``batch_size`` 4
per process the two processes' step-``s`` batches together are the one-process step-``s`` batch of 8;
every training row holds the same number of labels (every user but one has a full ``max_len`` window)
and there are an even number of rows, so DDP's average of the per-process mean losses is the
one-process mean; dropout is 0. Validation and test are split without padding: the data have an odd
number of users, so a padded ``DistributedSampler`` would evaluate one user twice and change the
metric sums (a bug these tests caught).

Lightning's "ddp" launcher starts the other rank by re-executing ``sys.argv``, which cannot work from
inside pytest, so the 2-process runs are subprocesses: the real ``recdistill`` command line (students),
or a small script calling the same ``recdistill.cli.main`` that also records what each rank chose
(teacher). The one-process references run in this process.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from recdistill.cli import main
from recdistill.data import CTRDataModule, SequentialDataModule
from recdistill.data.datamodules import RankShardSampler
from recdistill.data.sampling import EpochShuffleSampler
from recdistill.student.io import load_student

warnings.filterwarnings("ignore", ".*does not have many workers.*")

NUM_USERS = 47  # odd: the validation / test shards of 2 processes are uneven
MAX_LEN = 6
SUBPROCESS_ENV_DROP = ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "GROUP_RANK",
                       "LOCAL_WORLD_SIZE")
DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``events.csv`` (47 users: 46 with >= max_len + 3 events, one with 3, so 46 equal training rows) and
    ``student.yaml`` (a 1-layer SASRec without dropout, batch 8, 5 epochs)."""
    from recdistill.data import synthetic_interactions

    root = tmp_path_factory.mktemp("ddp")
    inter = synthetic_interactions(NUM_USERS, 30, mean_length=12, min_length=MAX_LEN + 3, seed=4,
                                   pattern_strength=0.9).interactions
    frame = inter[["user_id", "item_id", "timestamp", "rating"]]
    short = frame["user_id"] == frame["user_id"].max()
    frame[~short | (frame.groupby("user_id").cumcount() < 3)].to_csv(root / "events.csv", index=False)
    recipe = {
        "seed_everything": 0,
        "data": {"dataset": str(root / "events.csv"), "max_len": MAX_LEN, "train_windows": "last",
                 "batch_size": 8, "eval_batch_size": 16},
        "model": {"student": {"class_path": "recdistill.student.SASRec",
                              "init_args": {"hidden_size": 16, "num_layers": 1, "num_heads": 1, "dropout": 0.0,
                                            "max_len": MAX_LEN}},
                  "lr": 0.03},
        "trainer": {"max_epochs": 5, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 1},
    }
    (root / "student.yaml").write_text(yaml.safe_dump(recipe))
    return root


def _run_two_processes(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (which launches 2 DDP ranks itself) and fail with its output if it fails."""
    env = {k: v for k, v in os.environ.items() if k not in SUBPROCESS_ENV_DROP}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc


def _validation_curve(run: Path) -> list[dict[str, float]]:
    """Every validation row of the run's CSV log (one per epoch, then the final validation of the best)."""
    rows = csv.DictReader((run / "logs" / "version_0" / "metrics.csv").open())
    return [{k: float(v) for k, v in row.items() if v != "" and (k.startswith("valid/") or k == "epoch")}
            for row in rows if row.get("valid/ndcg@10")]


def _assert_same_metrics(got: dict[str, float], ref: dict[str, float], what: str) -> None:
    assert got.keys() == ref.keys(), what
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-6), f"{what}: {key}"


# ---------------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize("length", [46, 47])
def test_rank_shards_rebuild_the_one_process_order(length: int) -> None:
    """Training shards interleave back into the one-process epoch order (step by step); evaluation
    shards cover every example exactly once, without padding."""
    world, per_rank = 2, 4
    for epoch in (0, 3):
        single = EpochShuffleSampler(length, seed=5)
        single.set_epoch(epoch)
        order = list(single)
        shards = []
        for rank in range(world):
            sampler = RankShardSampler(length, world, rank, shuffle=True, seed=5, pad=True)
            sampler.set_epoch(epoch)
            shards.append(list(sampler))
            assert len(sampler) == len(shards[-1]) == -(-length // world)
        for step in range(-(-length // (world * per_rank))):
            together = [i for shard in shards for i in shard[step * per_rank:(step + 1) * per_rank]]
            expected = (order + order)[step * world * per_rank:(step + 1) * world * per_rank]
            assert sorted(together) == sorted(expected[:len(together)]), (epoch, step)
        assert [i for pair in zip(*shards) for i in pair][:length] == order
    evaluation = [list(RankShardSampler(length, world, rank, shuffle=False, pad=False)) for rank in range(world)]
    assert sorted(evaluation[0] + evaluation[1]) == list(range(length))
    assert [len(s) for s in evaluation] == [len(range(r, length, world)) for r in range(world)]


def test_a_process_without_evaluation_examples_still_joins_the_sum(workspace: Path) -> None:
    """With fewer evaluation examples than processes a rank evaluates nothing; it must still take part
    in every reduce (same tensors, same order), else the others wait forever, and log the others' metrics."""
    from types import SimpleNamespace

    from recdistill.metrics import SLICES
    from recdistill.student import build_student
    from recdistill.student.tasks import SequentialRecommender

    dm = SequentialDataModule(dataset=str(workspace / "events.csv"), max_len=MAX_LEN, eval_batch_size=NUM_USERS)
    batch = next(iter(dm.dataloader("valid")))
    student = build_student("sasrec", num_items=dm.num_items, hidden_size=8, max_len=MAX_LEN).eval()
    counts = dm.split.item_train_counts()
    busy, idle = (SequentialRecommender(student, item_train_counts=counts, sampled_negatives=5) for _ in range(2))
    with torch.no_grad():
        busy._evaluate(batch, "valid", 0)
    other = dict(busy._sums["valid"])
    reduced: list[tuple[int, ...]] = []

    def reduce(tensor: torch.Tensor, reduce_op: str) -> torch.Tensor:
        assert reduce_op == "sum"
        prefix = ["", "sampled5_"][len(reduced)]
        reduced.append(tuple(tensor.shape))
        return tensor + other[prefix].to(tensor)

    logged: dict[str, dict[str, float]] = {}
    for name, module, world in (("idle", idle, 2), ("alone", busy, 1)):
        module._trainer = SimpleNamespace(world_size=world, strategy=SimpleNamespace(reduce=reduce))
        module.log_dict = lambda values, _name=name, **_: logged.setdefault(_name, {}).update(values)
        module._finish("valid")
    assert reduced == [(1 + len(SLICES), 1 + 3 * len(idle.ks))] * 2  # overall + sampled, slices included
    _assert_same_metrics(logged["idle"], logged["alone"], "the idle rank logs the busy rank's metrics")
    assert logged["idle"]["valid/ndcg@10"] > 0 and "valid/sampled5_ndcg@10" in logged["idle"]


# ---------------------------------------------------------------------------------------------- students
def test_two_process_student_fit_equals_one_process(tmp_path: Path, workspace: Path) -> None:
    """`recdistill student fit` with 2 DDP processes (batch 4 each) == one process (batch 8): the same
    validation curve, selected epoch, validation and test metrics (each user counted once), and scores."""
    recipe = str(workspace / "student.yaml")
    one, two = tmp_path / "one", tmp_path / "two"
    dm = SequentialDataModule(dataset=str(workspace / "events.csv"), max_len=MAX_LEN)
    assert len(dm._dataset("train")) % 2 == 0 and len(dm._dataset("valid")) == NUM_USERS  # the premise
    assert main(["student", "fit", "--config", recipe, "--output-dir", str(one)]) == 0
    _run_two_processes(["-m", "recdistill.cli", "student", "fit", "--config", recipe, "--output-dir", str(two),
                        *DDP, "--data.batch_size", "4"], cwd=tmp_path)

    ref, got = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    assert got["best_epoch"] == ref["best_epoch"] and got["epochs"] == ref["epochs"] == 5
    for split in ("valid", "test"):  # every user once: a padded shard would count one of them twice
        assert sum(got[split][f"{s}/count"] for s in ("cold", "rare", "warm")) == NUM_USERS, split
        _assert_same_metrics(got[split], ref[split], split)
    ref_curve, got_curve = _validation_curve(one), _validation_curve(two)
    assert len(got_curve) == len(ref_curve) == 6  # 5 epochs + the final validation of the best epoch
    for got_row, ref_row in zip(got_curve, ref_curve):
        _assert_same_metrics(got_row, ref_row, f"epoch {ref_row['epoch']:.0f}")
    best = max(ref_curve[:-1], key=lambda row: row["valid/ndcg@10"])
    assert best["epoch"] == ref["best_epoch"]

    inputs = next(iter(dm.dataloader("test")))["input_ids"]
    with torch.no_grad():
        scores = [load_student(run / "student")(inputs) for run in (one, two)]
    torch.testing.assert_close(scores[1], scores[0], rtol=0, atol=1e-4)


@pytest.mark.slow
def test_two_process_ctr_fit_equals_one_process(tmp_path: Path, workspace: Path) -> None:
    """A CTR student (DeepFM) with 2 DDP processes == one process, with 93 validation and 93 test
    examples (uneven shards: the per-process outputs of different lengths are gathered without padding)."""
    recipe = {
        "seed_everything": 0,
        "data": {"dataset": str(workspace / "events.csv"), "batch_size": 16, "eval_batch_size": 64,
                 "valid_fraction": 0.15, "test_fraction": 0.15},
        "model": {"student": {"class_path": "recdistill.student.DeepFM", "init_args": {"embed_dim": 8, "dropout": 0.0}},
                  "lr": 0.01},
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 1},
    }
    path = tmp_path / "ctr.yaml"
    path.write_text(yaml.safe_dump(recipe))
    dm = CTRDataModule(dataset=str(workspace / "events.csv"), valid_fraction=0.15, test_fraction=0.15)
    sizes = {s: len(dm._dataset(s)) for s in ("train", "valid", "test")}
    assert sizes["train"] % 2 == 0 and sizes["valid"] % 2 == 1 and sizes["test"] % 2 == 1  # the premise
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["student", "fit", "--config", str(path), "--output-dir", str(one)]) == 0
    _run_two_processes(["-m", "recdistill.cli", "student", "fit", "--config", str(path), "--output-dir", str(two),
                        *DDP, "--data.batch_size", "8"], cwd=tmp_path)
    ref, got = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    assert ref["task"] == got["task"] == "ctr" and got["best_epoch"] == ref["best_epoch"]
    for split in ("valid", "test"):
        _assert_same_metrics(got[split], ref[split], split)
    for got_row, ref_row in zip(_validation_curve(two), _validation_curve(one), strict=True):
        _assert_same_metrics(got_row, ref_row, f"epoch {ref_row['epoch']:.0f}")


# ---------------------------------------------------------------------------------------------- teacher
TEACHER_SCRIPT = """
import json, sys
from pathlib import Path

import lightning as L
import recdistill.teacher.cli as teacher_cli
from recdistill.cli import main


class Alphas(L.Callback):
    '''The fusion weight this rank holds after each validation (not synchronised: its own choice).'''

    def __init__(self):
        self.alphas = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking and hasattr(getattr(pl_module, "teacher", pl_module), "fusion_alpha"):
            self.alphas.append(float(getattr(pl_module, "teacher", pl_module).fusion_alpha))


fit_teacher = teacher_cli.fit_teacher


def observed_fit_teacher(module, datamodule, trainer, output_dir, **kwargs):
    seen = Alphas()
    trainer.callbacks.append(seen)
    path = fit_teacher(module, datamodule, trainer, output_dir, **kwargs)
    rank = trainer.global_rank
    Path(output_dir, f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": trainer.world_size, "alphas": seen.alphas,
        "final_alpha": float(module.fusion_alpha) if hasattr(module, "fusion_alpha") else None,
        "checkpoint_written": (Path(path) / "teacher.json").is_file(),  # also on rank 1, once it returns
    }))
    return path


teacher_cli.fit_teacher = observed_fit_teacher
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def teacher_recipe(workspace: Path) -> Path:
    """A hybrid teacher (tiny llama + LoRA, ensemble with a 1-epoch SASRec, alpha chosen each epoch)."""
    from recdistill.data import load_split
    from recdistill.teacher.testing import make_tiny_llama

    cf = workspace / "cf"  # a weaker collaborative part than the LLM part: the chosen alphas are not 0 or 1
    assert main(["student", "fit", "--config", str(workspace / "student.yaml"), "--output-dir", str(cf),
                 "--trainer.max_epochs", "1"]) == 0
    tiny = make_tiny_llama(workspace / "tiny", texts=load_split(str(workspace / "events.csv")).item_text,
                           num_layers=2)
    recipe: dict[str, Any] = {
        "seed_everything": 0,
        "data": {"dataset": str(workspace / "events.csv"), "max_len": MAX_LEN, "train_windows": "last",
                 "batch_size": 8, "eval_batch_size": 16},
        "model": {"base_model": str(tiny), "num_layers": 2, "lr": 0.01, "dropout": 0.0, "lora_dropout": 0.0,
                  "progress": False, "embedding_cache_dir": str(workspace / "emb"),
                  "collaborative_model": str(cf / "student")},
        "trainer": {"max_epochs": 3, "accelerator": "cpu", "devices": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 1},
    }
    path = workspace / "teacher.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.mark.parametrize("teacher", [
    "hybrid",
    pytest.param("plain", marks=pytest.mark.slow),
])
def test_two_process_teacher_fit_equals_one_process(tmp_path: Path, teacher_recipe: Path, teacher: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """`recdistill teacher fit` with 2 DDP processes == one process: the same validation metrics at
    every epoch, the same kept epoch, the same saved adapter and head; for the hybrid teacher, both
    ranks choose the one-process fusion weight at every epoch."""
    from recdistill.teacher.cli import run_teacher_command

    monkeypatch.setenv("RECDISTILL_CACHE", str(tmp_path / "cache"))
    recipe = yaml.safe_load(teacher_recipe.read_text())
    if teacher == "plain":
        del recipe["model"]["collaborative_model"]
    config = tmp_path / "teacher.yaml"
    config.write_text(yaml.safe_dump(recipe))
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_teacher_command("fit", config, one) == 0
    script = tmp_path / "teacher_fit_ddp.py"
    script.write_text(textwrap.dedent(TEACHER_SCRIPT))
    _run_two_processes([str(script), "teacher", "fit", "--config", str(config), "--output-dir", str(two),
                        *DDP, "--data.batch_size", "4"], cwd=tmp_path)

    ref, got = (json.loads((run / "fit.json").read_text()) for run in (one, two))
    for got_row, ref_row in zip(got["history"], ref["history"], strict=True):
        assert got_row["epoch"] == ref_row["epoch"]
        valid = {k: v for k, v in ref_row.items() if k.startswith("valid/")}
        _assert_same_metrics({k: got_row[k] for k in valid}, valid, f"epoch {ref_row['epoch']}")
    assert got["best_epoch"] == ref["best_epoch"]
    assert got["best_score"] == pytest.approx(ref["best_score"], abs=1e-6)
    ranks = [json.loads((two / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"]) for r in ranks] == [(0, 2), (1, 2)]
    assert all(r["checkpoint_written"] for r in ranks)  # rank 1 returned only once rank 0 had saved
    for name in ("head.safetensors", "adapter_model.safetensors"):
        a, b = (load_file(str(run / "adapter" / name)) for run in (one, two))
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=0, atol=1e-5, msg=key)
    if teacher == "plain":
        return

    ref_alphas = [h["valid/fusion_alpha"] for h in ref["history"]]
    assert len(ref_alphas) == 3 and any(0.0 < a < 1.0 for a in ref_alphas), ref_alphas  # a real choice
    assert [h["valid/fusion_alpha"] for h in got["history"]] == ref_alphas
    for r in ranks:  # every rank chose the one-process alpha itself, at every epoch
        assert r["alphas"] == pytest.approx(ref_alphas, abs=1e-7)
        assert r["final_alpha"] == pytest.approx(ref_alphas[ref["best_epoch"]], abs=1e-7)
    head = load_file(str(two / "adapter" / "head.safetensors"))
    alpha_keys = [k for k in head if k.endswith("fusion_alpha")]
    assert alpha_keys and float(head[alpha_keys[0]]) == pytest.approx(ref_alphas[ref["best_epoch"]], abs=1e-7)
