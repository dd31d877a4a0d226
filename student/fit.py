"""Fit a student from a LightningCLI-style recipe, test the best checkpoint, write artefacts.

``DIR/metrics.json``: ``{"valid": {...}, "test": {...}, "num_parameters", "train_seconds",
"epochs", "seconds_per_epoch", "best_epoch", ...}``; ``DIR/config.yaml``: the resolved recipe;
``DIR/student/``: weights (safetensors) + constructor spec (see ``student/io.py``).
Model selection uses validation only; test is evaluated once, with the best checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from recdistill.atomic import write_json, write_text
from recdistill.data import CTRDataModule, SequentialDataModule
from recdistill.errors import ConfigError
from recdistill.recipes import recipe_path
from recdistill.student.io import save_student
from recdistill.student.tasks import CTRRecommender, SequentialRecommender
from recdistill.training import RNGStateCheckpoint, build_lightning_cli, check_resume_checkpoint

_MONITOR = {"sequential": ("valid/ndcg@10", "max"), "ctr": ("valid/auc", "max")}


class _StudentCLI(LightningCLI):
    task = "sequential"

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--early_stopping_patience", type=int, default=10,
                            help="validation epochs without improvement before stopping")
        if self.task == "sequential":
            parser.link_arguments("data.num_items", "model.num_items", apply_on="instantiate")
        else:
            for name in ("field_dims", "dense_dim", "num_items"):
                parser.link_arguments(f"data.{name}", f"model.{name}", apply_on="instantiate")


class _CTRCLI(_StudentCLI):
    task = "ctr"


def student_task(config: dict[str, Any]) -> str:
    """``"ctr"`` if the recipe's student is a CTR model, else ``"sequential"``."""
    from recdistill.student import STUDENTS

    student = (config.get("model") or {}).get("student") or {}
    class_path = student.get("class_path", "") if isinstance(student, dict) else ""
    short = class_path.rsplit(".", 1)[-1]
    for cls in STUDENTS.values():
        if cls.__name__ == short or class_path == f"{cls.__module__}.{cls.__name__}":
            return "ctr" if getattr(cls, "objective", "") == "ctr" else "sequential"
    return "sequential"


def fit_student(config: str | Path, output_dir: str | Path, overrides: list[str] | None = None,
                resume: bool = False, model_class: type | None = None) -> dict[str, Any]:
    """Train, select on validation, test once, save. Returns the metrics written to metrics.json.

    ``model_class`` replaces the task's Lightning module (e.g. the distillation module, which is a
    subclass); a module with ``plain_student()`` saves what that returns instead of ``model.student``."""
    config_file = recipe_path(str(config))
    raw = read_recipe(config_file)
    task = student_task(raw)
    monitor, mode = _MONITOR[task]
    output_dir = Path(output_dir)
    cli = build_lightning_cli(
        _CTRCLI if task == "ctr" else _StudentCLI,
        model_class=model_class or (CTRRecommender if task == "ctr" else SequentialRecommender),
        datamodule_class=CTRDataModule if task == "ctr" else SequentialDataModule,
        config=config_file, overrides=list(overrides or []), output_dir=output_dir,
        trainer_defaults={"deterministic": True},
    )
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    last = output_dir / "checkpoints" / "last.ckpt"
    if resume and last.exists():
        check_resume_checkpoint(last, model)
    output_dir.mkdir(parents=True, exist_ok=True)  # only once the recipe and the data are known to be good
    patience = cli.config["early_stopping_patience"]
    checkpoint = ModelCheckpoint(dirpath=output_dir / "checkpoints", monitor=monitor, mode=mode,
                                 save_last=True, filename="best")
    trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, ModelCheckpoint)]
    trainer.callbacks.extend([checkpoint, EarlyStopping(monitor=monitor, mode=mode, patience=patience),
                              RNGStateCheckpoint()])
    if not any(isinstance(c, ProgressBar) for c in trainer.callbacks):
        trainer.callbacks.append(RichProgressBar())
    write_text(output_dir / "config.yaml", cli.parser.dump(cli.config, skip_none=False))

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=str(last) if resume and last.exists() else None,
                weights_only=True)  # a resume checkpoint never unpickles code
    train_seconds = time.perf_counter() - started

    best_path = checkpoint.best_model_path
    if not best_path:
        raise RuntimeError(f"no checkpoint was selected on {monitor}: did validation run?")
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    model.load_state_dict(best["state_dict"])
    valid = _strip(trainer.validate(model, datamodule=datamodule, verbose=False)[0], "valid/")
    test = _strip(trainer.test(model, datamodule=datamodule, verbose=False)[0], "test/")
    epochs = trainer.current_epoch
    plain = getattr(model, "plain_student", None)
    student = plain() if plain else model.student  # what is saved and served (no training adapters)
    metrics = {
        "task": task,
        "student": getattr(model.student, "registry_name", type(model.student).__name__),
        "valid": valid,
        "test": test,
        "selected_on": monitor,
        "best_epoch": int(best["epoch"]),
        "epochs": int(epochs),
        "num_parameters": sum(p.numel() for p in student.parameters()),
        "training_parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 3),
        "seconds_per_epoch": round(train_seconds / max(epochs, 1), 3),
        "mask_seen": getattr(model, "mask_seen", None),
        "dataset_fingerprint": getattr(datamodule, "fingerprint", None),
        "threads": torch.get_num_threads(),
    }
    try:
        if trainer.is_global_zero:  # one writer; under several processes every one computed the same
            save_student(student, output_dir / "student")
            write_json(output_dir / "metrics.json", metrics)
    finally:
        trainer.strategy.barrier("fit_student")  # the others return once the artefacts exist
    return metrics


def read_recipe(path: Path) -> dict[str, Any]:
    """The recipe as a mapping; a YAML syntax error or a non-mapping names the file."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {path} is not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read recipe {path}: {exc}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections (data, model, trainer, ...), "
                          f"got a {type(raw).__name__}")
    return raw


def _strip(values: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: float(v) for k, v in values.items() if k.startswith(prefix)}


__all__ = ["fit_student", "read_recipe", "student_task"]
