"""Training helpers shared by student and teacher training (neither stage owns them).

- :class:`RNGStateCheckpoint`: every global RNG (Python, NumPy incl. its Gaussian cache, torch CPU,
  torch CUDA on every device) saved in Lightning checkpoints and restored on resume.
- :func:`build_lightning_cli`: the one LightningCLI set-up of ``student fit`` and ``teacher fit``
  (recipe file + ``--section.key value`` overrides, seed 0 by default, CSV logs and checkpoints in
  the output folder, nothing written by parsing) whose parse errors become one-line
  :class:`~recdistill.errors.ConfigError` messages instead of a usage dump and ``SystemExit``.
"""

from __future__ import annotations

import random
import logging
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import numpy as np
import torch

from recdistill.errors import CheckpointError, ConfigError, one_line, own_cause, user_message

__all__ = ["RNGStateCheckpoint", "build_lightning_cli", "capture_rng_state", "check_resume_checkpoint",
           "restore_rng_state"]


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG state, in types a ``weights_only`` checkpoint load accepts (tensors, lists, scalars)."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": py_version,
        "python": list(py_state),
        "python_gauss": py_gauss,
        "numpy_name": str(np_name),
        "numpy": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
        "numpy_pos": int(np_pos),
        "numpy_has_gauss": int(np_has_gauss),
        "numpy_cached_gaussian": float(np_gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["torch_cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`capture_rng_state` returned (also the older format without the Gaussian cache)."""
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    keys = state["numpy"]
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else np.asarray(keys)
    np.random.set_state((state.get("numpy_name", "MT19937"), keys.astype(np.uint32), int(state["numpy_pos"]),
                         int(state.get("numpy_has_gauss", 0)), float(state.get("numpy_cached_gaussian", 0.0))))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("torch_cuda")
    if cuda_states and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if len(cuda_states) != count:
            warnings.warn(f"the checkpoint holds CUDA RNG states of {len(cuda_states)} device(s) but {count} are "
                          f"visible; restoring the first {min(count, len(cuda_states))}: the resume is not exact",
                          stacklevel=2)
        for index, cuda_state in enumerate(cuda_states[:count]):
            torch.cuda.set_rng_state(cuda_state, device=index)
    elif cuda_states:
        warnings.warn("the checkpoint holds CUDA RNG states but CUDA is not available: they are not restored",
                      stacklevel=2)


class RNGStateCheckpoint(L.Callback):
    """Save the Python / NumPy / torch (CPU and every CUDA device) RNG states in checkpoints and restore
    them on resume.

    Lightning restores weights, optimiser and loop state but not the global RNGs, so dropout
    and masking would differ after a resume; with this callback (and epoch-seeded shuffling) a
    resumed job continues exactly like an uninterrupted one. NumPy's state is kept whole, including
    the cached second Gaussian of ``np.random.normal``'s polar method.
    """

    def state_dict(self) -> dict[str, Any]:
        return capture_rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        restore_rng_state(state_dict)


# Known-harmless messages of the libraries we use, silenced so the console shows our progress only.
KNOWN_NOISE = (
    r"LightningCLI's args parameter is intended",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",  # lightning vs torch pytree API
    r"Found \d+ module\(s\) in eval mode at the start of training.*",  # frozen teacher / CF parts, on purpose
    r"Could not find a config file in .* will assume that the vocabulary was not modified",  # peft, GGUF base
    r".*does not have many workers.*",  # in-memory batches: workers would only add overhead
    r"The number of training batches .* is smaller than the logging interval.*",
    # torch's dynamic int8 (compress/quantize.py) builds quantized tensors, deprecated in favour of torchao
    r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor creation.*",
    # our evaluation metrics are summed over the processes before they are logged (exact, see student/tasks.py)
    r"It is recommended to use `self.log\('(valid|test)/.*sync_dist=True\)` when logging on epoch level",
)


class _NoTips(logging.Filter):
    """Drops Lightning's advertising tips, onnxruntime's per-call pre-processing advice and the Llama
    tokenizer's note on its default (legacy) behaviour, which the GGUF tokenizer keeps on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return ("💡 Tip" not in message and "pre-processing before quantization" not in message
                and "You are using the default legacy behaviour" not in message)


#: loggers whose known-harmless records :class:`_NoTips` drops (filters act where a record is created)
QUIET_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "transformers.models.llama.tokenization_llama", "transformers.models.llama.tokenization_llama_fast")


def quiet_known_noise() -> None:
    """Silence :data:`KNOWN_NOISE` warnings and Lightning's product tips (idempotent)."""
    for pattern in KNOWN_NOISE:
        warnings.filterwarnings("ignore", message=pattern)
    root = logging.getLogger()  # onnxruntime.quantization advises on the root logger at every call
    if not any(isinstance(f, _NoTips) for f in root.filters):
        root.addFilter(_NoTips())
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())


def build_lightning_cli(
    cli_class: type,
    *,
    model_class: type,
    datamodule_class: type,
    config: str | Path,
    overrides: Sequence[str] = (),
    output_dir: str | Path,
    subclass_mode_model: bool = False,
    trainer_defaults: dict[str, Any] | None = None,
) -> Any:
    """Parse ``config`` + ``overrides`` with ``cli_class`` (a ``LightningCLI`` subclass) and instantiate
    trainer, model and data module without running anything.

    Defaults: ``seed_everything: 0``, ``trainer.default_root_dir`` and a CSV logger in ``output_dir``
    (created lazily by the logger, never by parsing). A parse error (unknown key, wrong type, bad
    class path) raises :class:`~recdistill.errors.ConfigError` naming the recipe and the key; a
    constructor error of ours surfaces as itself instead of jsonargparse's dump of the whole config.
    """
    from jsonargparse import ArgumentError, lazy_instance
    from lightning.pytorch.loggers import CSVLogger

    quiet_known_noise()
    defaults: dict[str, Any] = {
        "default_root_dir": str(output_dir),
        "logger": lazy_instance(CSVLogger, save_dir=str(output_dir), name="logs"),
    }
    defaults.update(trainer_defaults or {})
    try:
        return cli_class(
            model_class=model_class,
            datamodule_class=datamodule_class,
            subclass_mode_model=subclass_mode_model,
            args=["--config", str(config), *overrides],
            run=False,
            save_config_callback=None,
            seed_everything_default=0,
            trainer_defaults=defaults,
            parser_kwargs={"exit_on_error": False},
        )
    except (ArgumentError, ValueError, TypeError) as exc:
        # jsonargparse wraps our constructors' errors (and dumps the whole config): surface ours
        cause = own_cause(exc)
        if isinstance(cause, ArgumentError):  # jsonargparse's own chain: its outermost message is the clearest
            cause = None
        if cause is not None and user_message(cause) is not None:
            raise cause from None
        if cause is not None and isinstance(cause, (ValueError, TypeError, KeyError)):
            raise ConfigError(f"recipe {config}: {one_line(str(cause))}") from cause
        if isinstance(exc, ArgumentError):
            raise ConfigError(f"recipe {config}: {_parse_error_message(str(exc))}") from None
        raise


def _parse_error_message(text: str) -> str:
    """One line from a jsonargparse error; for a union (``class_path``) error only the class problems are kept,
    not the ``None`` alternative nor the dump of the given value."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not any("Does not validate against any of the Union subtypes" in line for line in lines):
        return one_line(text)
    kept, keep = [lines[0]], False
    for line in lines[1:]:
        if line.startswith("- "):
            keep = not line.startswith("- Expected a <class 'NoneType'>")  # the optional section's other branch
        elif line.startswith(("Given value", "Subtypes:", "Errors:")):
            keep = False
        if keep:
            kept.append(line[2:] if line.startswith("- ") else line)
    return one_line("\n".join(kept)) if len(kept) > 1 else one_line(text)


def check_resume_checkpoint(path: str | Path, model: torch.nn.Module,
                            select: Callable[[str], bool] | None = None,
                            migrate: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Refuse (with :class:`~recdistill.errors.CheckpointError`) to resume from a checkpoint written for another
    dataset or recipe: its weights (those ``select`` keeps, default all) must have ``model``'s names and shapes,
    and a recorded ``dataset_fingerprint`` hyper-parameter must equal the model's. Checked before anything is
    written, so a refused resume leaves the run folder as it was. ``migrate`` maps the checkpoint's
    state-dict keys of an earlier layout to the current one (as the module's ``on_load_checkpoint`` does)."""
    from recdistill.atomic import CorruptFileError, verify_zip_file

    path = Path(path)
    try:  # torch.load does not check the archive's CRC-32s: a flipped tensor byte would resume silently
        verify_zip_file(path)
    except CorruptFileError as exc:
        raise CheckpointError(f"cannot resume from {path}: {exc}; delete it or run without --resume") from None
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        saved = checkpoint["state_dict"]
        if migrate is not None:
            saved = migrate(saved)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is the same user-facing failure
        raise CheckpointError(f"cannot resume from {path}: the file is unreadable ({type(exc).__name__}: "
                              f"{one_line(str(exc))[:200]}); delete it or run without --resume") from None
    keep = select or (lambda name: True)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if keep(k)}
    got = {k: tuple(v.shape) for k, v in saved.items() if keep(k)}
    if expected != got:
        diff = sorted(k for k in expected.keys() | got.keys() if expected.get(k) != got.get(k))
        first = diff[0]
        raise CheckpointError(
            f"cannot resume from {path}: it was written for another dataset or recipe ({len(diff)} weight(s) differ, "
            f"e.g. {first}: checkpoint {got.get(first)} vs recipe {expected.get(first)}); use another --output-dir "
            f"or run without --resume")
    recorded = (checkpoint.get("hyper_parameters") or {}).get("dataset_fingerprint")
    current = getattr(model, "dataset_fingerprint", None)
    if recorded and current and recorded != current:
        raise CheckpointError(f"cannot resume from {path}: it was trained on another dataset (fingerprint "
                              f"{recorded[:12]}... vs {current[:12]}...); use another --output-dir or run without "
                              f"--resume")


def say(*args: Any, **kwargs: Any) -> None:
    """``print`` on the global-zero process only (a multi-process run reports once)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:
        print(*args, **kwargs)
