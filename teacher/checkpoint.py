"""The teacher checkpoint format (``save_pretrained`` folder): writing it, loading it and the checks made then.

A teacher folder holds the peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``),
``head.safetensors`` (tables, projections, scale) and ``teacher.json``::

    {"format_version": 1, "class": "recdistill.teacher.hllm.HLLMTeacher", "init_args": {...},
     "item_dim": d, "collab_dim": d_cf | null, "collab_model": {"name", "init_args"} | null,
     "base_model": BaseModelRef, "dataset_fingerprint": ..., "trained_state_sha256": ...}

Loading treats ``teacher.json`` as untrusted input (a folder can come from anywhere):

- options that execute code (``trust_remote_code``) are never read from it: only the caller's
  explicit argument (``--trust-remote-code``) turns them on;
- ``class`` must be one of the registered teacher classes (:data:`TEACHER_CLASSES`), never an
  arbitrary import path;
- ``init_args`` must be constructor arguments of that class holding plain JSON values; arguments
  that name files (``collaborative_embeddings``, ``collaborative_model``, ``embedding_cache_dir``)
  are not followed: the frozen tables they produced are restored from ``head.safetensors`` and the
  collaborative student is rebuilt from its registry spec (``collab_model``); ``gguf_file`` must be a
  bare file name;
- the base model is reloaded at the recorded hub revision and its weights' sha256 is compared with
  the recorded one for every kind of source (asset, GGUF, folder, hub); a check that cannot be made
  is reported with a :class:`BaseModelCheckWarning`;
- the adapter + head weights must hash to ``trained_state_sha256`` (a corrupted file is named).

:func:`save_teacher` / :func:`load_pretrained` are ``HLLMTeacher.save_pretrained`` / ``from_pretrained``;
:func:`is_trained_key` names the state-dict keys training changes (Lightning checkpoints, best-epoch
restore).
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from recdistill.atomic import atomic_directory
from recdistill.errors import CheckpointError

log = logging.getLogger(__name__)

TEACHER_JSON = "teacher.json"
FORMAT_VERSION = 1

# Registered teacher classes: the only ones a teacher.json may name (module path -> attribute).
TEACHER_CLASSES: dict[str, tuple[str, str]] = {
    "recdistill.teacher.hllm.HLLMTeacher": ("recdistill.teacher.hllm", "HLLMTeacher"),
    "recdistill.teacher.text_prompt.TextPromptTeacher": ("recdistill.teacher.text_prompt", "TextPromptTeacher"),
}

# Loader options that can execute code: never taken from a checkpoint.
CODE_EXECUTING_OPTIONS = ("trust_remote_code",)
# Arguments that are runtime objects or machine-local paths: never taken from a checkpoint.
NOT_FROM_CHECKPOINT = ("tokenizer", "item_text", "item_embeddings", "embedding_cache_dir", "progress")
# Arguments that name files whose content the checkpoint already holds (restored from head.safetensors).
FILE_ARGS = ("collaborative_embeddings", "collaborative_model")


class BaseModelCheckWarning(UserWarning):
    """The base model a teacher is reloaded on could not be fully verified (no revision pin or no sha256)."""


def register_teacher_class(cls: type) -> type:
    """Allow ``cls`` (a subclass of ``HLLMTeacher``) to be named in ``teacher.json``; usable as a decorator."""
    from recdistill.teacher.hllm import HLLMTeacher

    if not (isinstance(cls, type) and issubclass(cls, HLLMTeacher)):
        raise TypeError(f"{cls!r} is not a subclass of HLLMTeacher")
    TEACHER_CLASSES[f"{cls.__module__}.{cls.__qualname__}"] = (cls.__module__, cls.__qualname__)
    return cls


def read_teacher_json(directory: str | Path) -> dict[str, Any]:
    """``teacher.json`` of ``directory``, checked for shape; a missing or malformed file names itself."""
    path = Path(directory) / TEACHER_JSON
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a teacher checkpoint (no {TEACHER_JSON}); "
                              f"write one with `recdistill teacher fit`")
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt (not valid JSON: {exc}); re-run `recdistill teacher fit`") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r}; this recdistill reads {FORMAT_VERSION}")
    for key, kind in (("class", str), ("init_args", dict), ("base_model", dict), ("item_dim", int)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{path}: field {key!r} must be a {kind.__name__}, got {meta.get(key)!r:.80}")
    return meta


def teacher_class(meta: dict[str, Any], directory: str | Path) -> type:
    """The registered class named by ``meta["class"]``; anything else is refused without importing it."""
    import importlib

    from recdistill.teacher.hllm import HLLMTeacher

    name = meta["class"]
    if name not in TEACHER_CLASSES:
        raise CheckpointError(f"{Path(directory) / TEACHER_JSON}: refusing teacher class {name!r}: not a registered "
                              f"teacher ({', '.join(sorted(TEACHER_CLASSES))})")
    module_name, attr = TEACHER_CLASSES[name]
    cls = getattr(importlib.import_module(module_name), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, HLLMTeacher)):
        raise CheckpointError(f"teacher class {name!r} is not a subclass of HLLMTeacher")
    return cls


def accepted_args(cls: type) -> set[str]:
    """Constructor argument names of ``cls`` and of the teacher classes it passes ``**kwargs`` to."""
    from recdistill.teacher.hllm import HLLMTeacher

    accepted: set[str] = set()
    for klass in cls.__mro__:
        if isinstance(klass, type) and issubclass(klass, HLLMTeacher):
            params = inspect.signature(klass.__init__).parameters.values()
            accepted |= {p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
    accepted.discard("self")
    return accepted


def constructor_args(cls: type, meta: dict[str, Any], directory: str | Path,
                     overrides: dict[str, Any]) -> dict[str, Any]:
    """Safe constructor arguments for rebuilding the teacher of ``meta`` (see the module docstring)."""
    where = Path(directory) / TEACHER_JSON
    saved = dict(meta["init_args"])
    unknown = sorted(set(saved) - accepted_args(cls))
    if unknown:
        raise CheckpointError(f"{where}: init_args {unknown} are not arguments of {cls.__name__}")
    for option in CODE_EXECUTING_OPTIONS:
        if saved.pop(option, None):
            log.warning("%s asks for %s=True; ignored: only the caller turns it on (trust_remote_code=True, "
                        "`--trust-remote-code`)", where, option)
    for name in NOT_FROM_CHECKPOINT:
        saved.pop(name, None)
    gguf = saved.get("gguf_file")
    if gguf is not None and (not isinstance(gguf, str) or Path(gguf).name != gguf or gguf in ("", ".", "..")):
        raise CheckpointError(f"{where}: gguf_file must be a bare file name inside the base model folder, "
                              f"got {gguf!r}")
    if not isinstance(saved.get("base_model"), str):
        raise CheckpointError(f"{where}: init_args.base_model must be a string, got {saved.get('base_model')!r:.80}")
    num_items = saved.get("num_items")
    if not isinstance(num_items, int) or isinstance(num_items, bool) or num_items < 1:
        raise CheckpointError(f"{where}: init_args.num_items must be a positive integer, got {num_items!r}")
    for name in FILE_ARGS:  # never follow a path from the file; the trained tables come from head.safetensors
        saved[name] = None
    collab_dim = meta.get("collab_dim")
    if collab_dim is not None:
        if not isinstance(collab_dim, int) or collab_dim < 1:
            raise CheckpointError(f"{where}: collab_dim must be a positive integer, got {collab_dim!r}")
        saved["collaborative_embeddings"] = torch.zeros(num_items + 1, collab_dim)
    spec = meta.get("collab_model")
    if spec is not None:
        saved["collaborative_model"] = _collaborative_student(spec, where)
    args = {**saved, **overrides}
    args["progress"] = False
    base = meta["base_model"]
    if base.get("kind") == "hub" and "base_revision" not in overrides:
        args["base_revision"] = base.get("revision")  # reload the weights the teacher was trained on
    return args


def _collaborative_student(spec: Any, where: Path) -> Any:
    from recdistill.student import UnknownStudentError, build_student

    if not (isinstance(spec, dict) and isinstance(spec.get("name"), str) and isinstance(spec.get("init_args"), dict)):
        raise CheckpointError(f"{where}: collab_model must be {{'name': <registered student>, 'init_args': {{...}}}}")
    try:
        return build_student(spec["name"], **spec["init_args"])
    except (UnknownStudentError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: collab_model cannot be rebuilt: {exc}") from None


def check_base_model(saved: Any, loaded: Any, directory: str | Path, check: bool = True) -> None:
    """Compare the reloaded base model's identity with the recorded one; say so when a check cannot be made."""
    where = Path(directory) / TEACHER_JSON
    if not check:
        warnings.warn(f"base model {saved.source!r} of {directory} is not verified (check_base=False)",
                      BaseModelCheckWarning, stacklevel=3)
        return
    if saved.kind == "hub":
        if not saved.revision:
            warnings.warn(f"{where} records no hub revision for base model {saved.source!r}: it was reloaded at "
                          f"the latest revision {loaded.revision!r}, which may differ from the trained one",
                          BaseModelCheckWarning, stacklevel=3)
        elif loaded.revision and loaded.revision != saved.revision:
            raise CheckpointError(f"base model {saved.source!r} was reloaded at revision {loaded.revision} but the "
                                  f"teacher in {directory} was trained at {saved.revision}")
    if not saved.weights_sha256:
        warnings.warn(f"{where} records no weights sha256 for base model {saved.source!r}: cannot verify that the "
                      f"reloaded weights are the ones the teacher was trained on", BaseModelCheckWarning, stacklevel=3)
        return
    if not loaded.weights_sha256:
        warnings.warn(f"could not compute the weights sha256 of base model {saved.source!r} ({loaded.path}): "
                      f"the reloaded weights are not verified", BaseModelCheckWarning, stacklevel=3)
        return
    if loaded.weights_sha256 != saved.weights_sha256:
        raise CheckpointError(
            f"base model {saved.source!r} changed since the teacher in {directory} was trained: weights sha256 "
            f"{loaded.weights_sha256} != recorded {saved.weights_sha256}")


def check_trained_state(module: Any, meta: dict[str, Any], directory: str | Path) -> None:
    """The loaded adapter + head weights must hash to the recorded ``trained_state_sha256``."""
    recorded = meta.get("trained_state_sha256")
    if not recorded:
        warnings.warn(f"{Path(directory) / TEACHER_JSON} records no trained_state_sha256: the adapter and head "
                      f"weights are not verified", BaseModelCheckWarning, stacklevel=3)
        return
    actual = module.trained_state_hash()
    if actual != recorded:
        raise CheckpointError(
            f"the weights in {directory} (adapter_model.safetensors / head.safetensors) do not match "
            f"{TEACHER_JSON}: sha256 {actual} != recorded {recorded}; the checkpoint is corrupt, re-run "
            f"`recdistill teacher fit`")


# --------------------------------------------------------------------------- trained weights
def state_hash(tensors: dict[str, Tensor]) -> str:
    """sha256 over named tensors (name, dtype, shape and bytes, in name order)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def is_trained_key(name: str) -> bool:
    """State-dict keys that training changes: everything but the frozen base (LoRA included)."""
    return not name.startswith("backbone.") or "lora_" in name


def copy_trainable_state(module: nn.Module) -> dict[str, Tensor]:
    """CPU copy of every trainable parameter (and item buffers) for best-epoch restore."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if is_trained_key(k)}


def restore_trainable_state(module: nn.Module, state: dict[str, Tensor]) -> None:
    module.load_state_dict(copy.copy(state), strict=False)


# --------------------------------------------------------------------------- save / load a teacher folder
def save_teacher(module: Any, directory: str | Path) -> Path:
    """Write ``module``'s adapter + head + teacher.json to ``directory`` atomically; returns it."""
    meta = {
        "format_version": FORMAT_VERSION,
        "class": f"{type(module).__module__}.{type(module).__qualname__}",
        "init_args": module.init_args(),
        "item_dim": module.item_dim,
        "collab_dim": int(module.item_collab_emb.shape[1]) if hasattr(module, "item_collab_emb") else None,
        "collab_model": ({"name": module.collab_model.registry_name, "init_args": module.collab_model.init_args}
                         if hasattr(module, "collab_model") else None),
        "base_model": module.base_ref.to_dict(),
        "base_model_needs_remote_code": bool(module.hparams.get("trust_remote_code", False)),  # informational only
        "dataset_fingerprint": module.dataset_fingerprint,
        "trained_state_sha256": module.trained_state_hash(),
    }

    with atomic_directory(directory) as tmp:
        module.backbone.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
        save_file(module.head_state_dict(), str(tmp / "head.safetensors"), metadata={"format": "pt"})
        (tmp / TEACHER_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))
    return Path(directory)


def load_pretrained(cls: type, directory: str | Path, *, check_base: bool = True, trust_remote_code: bool = False,
                    overrides: dict[str, Any] | None = None) -> Any:
    """Rebuild a teacher of class ``cls`` saved by :func:`save_teacher` (see the module docstring)."""
    from peft import set_peft_model_state_dict

    from recdistill.teacher.loading import BaseModelRef

    directory = Path(directory)
    meta = read_teacher_json(directory)
    args = constructor_args(cls, meta, directory, dict(overrides or {}))
    args["trust_remote_code"] = bool(trust_remote_code)
    num_items = int(args["num_items"])
    for name in ("adapter_model.safetensors", "head.safetensors"):
        if not (directory / name).is_file():
            raise CheckpointError(f"teacher checkpoint {directory} lacks {name}; re-run `recdistill teacher fit`")
    module = cls(**args, item_embeddings=torch.zeros(num_items, int(meta["item_dim"])))
    module.collaborative_source = meta["init_args"].get("collaborative_embeddings")  # informational only
    module.collaborative_model_source = meta["init_args"].get("collaborative_model")
    check_base_model(BaseModelRef.from_dict(meta["base_model"]), module.base_ref, directory, check=check_base)
    try:
        adapter = load_file(str(directory / "adapter_model.safetensors"))
        head = load_file(str(directory / "head.safetensors"))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"cannot read the weights in {directory}: {exc}") from None
    result = set_peft_model_state_dict(module.backbone, adapter)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise CheckpointError(f"adapter in {directory} has unexpected keys: {unexpected[:5]}")
    try:
        missing, unexpected = module.load_state_dict(head, strict=False)
    except RuntimeError as exc:  # shape mismatch
        raise CheckpointError(f"head weights in {directory / 'head.safetensors'} do not fit teacher.json: "
                              f"{str(exc).splitlines()[-1].strip()}") from None
    missing = [k for k in missing if not k.startswith("backbone.")]
    if missing or unexpected:
        raise CheckpointError(f"head weights in {directory} do not match: missing {missing}, "
                              f"unexpected {unexpected}")
    check_trained_state(module, meta, directory)
    module.dataset_fingerprint = meta.get("dataset_fingerprint")
    module.eval()
    return module


def load_teacher(directory: str | Path, *, trust_remote_code: bool = False, **overrides: Any) -> Any:
    """Load any teacher checkpoint by the class recorded in its ``teacher.json``, which must be a registered
    teacher class (:data:`TEACHER_CLASSES`); ``trust_remote_code`` only from here."""
    meta = read_teacher_json(directory)
    cls = teacher_class(meta, directory)
    return cls.from_pretrained(directory, trust_remote_code=trust_remote_code, **overrides)


__all__ = ["BaseModelCheckWarning", "CODE_EXECUTING_OPTIONS", "FORMAT_VERSION", "TEACHER_CLASSES", "TEACHER_JSON",
           "accepted_args", "check_base_model", "check_trained_state", "constructor_args", "copy_trainable_state",
           "is_trained_key", "load_pretrained", "load_teacher", "read_teacher_json", "register_teacher_class",
           "restore_trainable_state", "save_teacher", "state_hash", "teacher_class"]
