"""``recdistill teacher fit|emit|eval --config RECIPE --output-dir DIR [--section.key value ...]``.

Recipe sections: ``seed_everything``, ``data`` (SequentialDataModule init args), ``model``
(the teacher; ``num_items``, ``item_text`` and ``dataset_fingerprint`` are linked from the data),
``trainer`` (Lightning Trainer args), ``emit`` (signal emission settings) and ``eval``
(evaluation settings).

``model`` is parsed in LightningCLI's subclass mode with ``HLLMTeacher`` as the base class. A flat
section (``model: {num_layers: 6, ...}``) is taken by jsonargparse as the init args of the base
class itself, i.e. ``HLLMTeacher``; another teacher is chosen the jsonargparse way::

    model:
      class_path: recdistill.teacher.TextPromptTeacher   # or just TextPromptTeacher
      init_args: {num_layers: 30, max_history_items: 20}

Overrides: ``--model.num_layers 4`` (either form) or ``--model.init_args.num_layers 4``;
``--model.class_path ...`` switches the class. emit/eval load the fitted teacher (any class, as
recorded in ``adapter/teacher.json``) and ignore the ``model`` section, but need fit's ``data``
settings. Outputs in DIR: ``adapter/`` + ``fit.json`` + ``config.yaml`` (fit), ``signals/``
(emit, unless ``emit.output_dir`` is set), ``metrics.json`` (eval).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recdistill.teacher.evaluate import evaluate_teacher
from recdistill.teacher.fit import fit_teacher
from recdistill.teacher.signals import emit_signals
from recdistill.training import say


def _add_common(parser) -> None:
    parser.add_argument("--emit.k", type=int, default=50, help="top-K items per example")
    parser.add_argument("--emit.layers", type=list[int], default=[], help="hidden-state indices to store")
    parser.add_argument("--emit.splits", type=list[str], default=["train", "valid", "test"])
    parser.add_argument("--emit.shard_size", type=int, default=4096)
    parser.add_argument("--emit.train_every", type=int, default=1)
    parser.add_argument("--emit.train_stride", type=int | None, default=None)
    parser.add_argument("--emit.batch_size", type=int, default=16)
    parser.add_argument("--emit.exclude_target", type=bool, default=True)
    parser.add_argument("--emit.overwrite", type=bool, default=False)
    parser.add_argument("--emit.output_dir", type=str | None, default=None)
    parser.add_argument("--emit.max_new_shards", type=int | None, default=None,
                        help="stop after writing this many shards (a later run resumes)")
    parser.add_argument("--emit.accelerator", type=str, default="auto")
    parser.add_argument("--emit.devices", type=int | str, default=1,
                        help="processes for emission; with several, use --emit.strategy ddp")
    parser.add_argument("--emit.num_nodes", type=int, default=1)
    parser.add_argument("--emit.strategy", type=str, default="auto")
    parser.add_argument("--emit.precision", type=str | None, default=None)
    parser.add_argument("--eval.long_tail_threshold", type=int, default=10)
    parser.add_argument("--eval.latency_users", type=int, default=200)
    parser.add_argument("--eval.splits", type=list[str], default=["valid", "test"])


def _fit_cli(config: Path, output_dir: Path, rest: list[str]):
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from recdistill.data import SequentialDataModule
    from recdistill.teacher.hllm import HLLMTeacher
    from recdistill.teacher.text_prompt import TextPromptTeacher  # noqa: F401  (short class_path names)
    from recdistill.training import build_lightning_cli

    class TeacherCLI(LightningCLI):
        def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            """As LightningCLI's, except that ``model`` is the teacher (a plain ``nn.Module``, wrapped in
            ``TeacherLightningModule`` by ``fit_teacher``), not a LightningModule."""
            parser.add_lightning_class_args(self.trainer_class, "trainer")
            parser.set_defaults({"trainer." + k: v for k, v in self.trainer_defaults.items() if k != "callbacks"})
            parser.add_subclass_arguments(self._model_class, "model", fail_untyped=False, required=True)
            parser.add_lightning_class_args(self._datamodule_class, "data")

        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            _add_common(parser)
            parser.link_arguments("data.num_items", "model.init_args.num_items", apply_on="instantiate")
            parser.link_arguments("data.split", "model.init_args.item_text", apply_on="instantiate",
                                  compute_fn=lambda split: list(split.item_text))
            parser.link_arguments("data.fingerprint", "model.init_args.dataset_fingerprint", apply_on="instantiate")

    return build_lightning_cli(
        TeacherCLI,
        model_class=HLLMTeacher,
        subclass_mode_model=True,  # a flat `model:` section means HLLMTeacher itself (jsonargparse >= 4.29)
        datamodule_class=SequentialDataModule,
        config=config, overrides=rest, output_dir=output_dir,
    )


def _data_only(config: Path, rest: list[str]) -> tuple[Any, dict[str, Any]]:
    """Parse the recipe, instantiating only the data module (emit/eval load the fitted teacher)."""
    from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

    from recdistill.data import SequentialDataModule
    from recdistill.errors import ConfigError, one_line

    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(SequentialDataModule, "data")
    parser.add_argument("--seed_everything", type=Any, default=0)
    parser.add_argument("--model", type=dict, default={})
    parser.add_argument("--trainer", type=dict, default={})
    _add_common(parser)
    try:
        cfg = parser.parse_args(["--config", str(config), *rest])
    except ArgumentError as exc:
        raise ConfigError(f"recipe {config}: {one_line(str(exc))}") from None
    init = parser.instantiate_classes(cfg)
    return init.data, cfg.as_dict()


def _emit_trainer_kwargs(e: dict[str, Any]) -> dict[str, Any]:
    kwargs = {"accelerator": e["accelerator"], "devices": e["devices"], "num_nodes": e["num_nodes"],
              "strategy": e["strategy"]}
    if e.get("precision"):
        kwargs["precision"] = e["precision"]
    return kwargs


def run_teacher_command(action: str, config: str | Path, output_dir: str | Path, rest: list[str] | None = None,
                        resume: bool = False, trust_remote_code: bool = False) -> int:
    """Dispatch ``fit`` / ``emit`` / ``eval``; returns a process exit code.

    Expected failures raise :class:`~recdistill.errors.UserError` (or one of the package's known error
    types) before anything is written to ``output_dir``. ``trust_remote_code`` (``--trust-remote-code``)
    lets emit/eval run the base model's hub code; it is never read from the checkpoint.
    """
    from recdistill.atomic import write_text
    from recdistill.errors import CheckpointError, ConfigError
    from recdistill.recipes import recipe_path

    if action not in ("fit", "emit", "eval"):
        raise ConfigError(f"unknown teacher action {action!r}; use fit, emit or eval")
    rest = list(rest or [])
    config = recipe_path(str(config))
    output_dir = Path(output_dir)
    if action == "fit":
        cli = _fit_cli(config, output_dir, rest)
        last = output_dir / "checkpoints" / "last.ckpt"
        if resume and last.exists():
            from recdistill.teacher.lightning_module import (TeacherLightningModule, is_trained_checkpoint_key,
                                                             migrate_checkpoint_keys)
            from recdistill.training import check_resume_checkpoint

            check_resume_checkpoint(last, TeacherLightningModule(cli.model), select=is_trained_checkpoint_key,
                                    migrate=migrate_checkpoint_keys)
        output_dir.mkdir(parents=True, exist_ok=True)  # only once the recipe and the data are known to be good
        write_text(output_dir / "config.yaml", cli.parser.dump(cli.config, skip_none=False))
        path = fit_teacher(cli.model, cli.datamodule, cli.trainer, output_dir, resume=resume)
        say(f"wrote teacher checkpoint {path}")
        return 0
    datamodule, cfg = _data_only(config, rest)
    checkpoint = output_dir / "adapter"
    if not (checkpoint / "teacher.json").is_file():
        raise CheckpointError(f"no fitted teacher in {checkpoint} (no teacher.json); run "
                              f"`recdistill teacher fit --config {config} --output-dir {output_dir}` first")
    from recdistill.teacher.hllm import load_teacher

    module = load_teacher(checkpoint, trust_remote_code=trust_remote_code)
    trained_on = getattr(module, "dataset_fingerprint", None)
    if trained_on is not None and trained_on != datamodule.fingerprint:
        raise CheckpointError(
            f"the teacher in {checkpoint} was trained on another dataset (fingerprint {trained_on[:12]}...) than "
            f"data.dataset={cfg['data'].get('dataset')!r} (fingerprint {datamodule.fingerprint[:12]}...); use the "
            f"recipe's data settings from fit, or fit a teacher on this data")
    output_dir.mkdir(parents=True, exist_ok=True)
    if action == "emit":
        e = cfg["emit"]
        out = Path(e["output_dir"]) if e.get("output_dir") else output_dir / "signals"
        path = emit_signals(module, datamodule, out, k=e["k"], layers=e["layers"], splits=e["splits"],
                            shard_size=e["shard_size"], overwrite=e["overwrite"], train_every=e["train_every"],
                            train_stride=e["train_stride"], exclude_target=e["exclude_target"],
                            batch_size=e["batch_size"], max_new_shards=e["max_new_shards"],
                            trainer_kwargs=_emit_trainer_kwargs(e))
        say(f"wrote teacher signals {path}")
        return 0
    ev = cfg["eval"]
    metrics = evaluate_teacher(module, datamodule, output_dir, splits=ev["splits"],
                               long_tail_threshold=ev["long_tail_threshold"], latency_users=ev["latency_users"])
    shown = {k: round(v, 4) for k, v in metrics.get("test", {}).items() if k.endswith("@10")}
    say(f"teacher test: {shown}; wrote {output_dir / 'metrics.json'}")
    return 0
