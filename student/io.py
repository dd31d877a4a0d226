"""Save and load a trained student without Lightning or the recipe that made it.

A student folder holds ``model.safetensors`` (weights) and ``student.json``
(``{"name": registry name, "init_args": constructor arguments, "weights_sha256": ..., "spec_sha256": ...}``),
written atomically. ``spec_sha256`` is the sha256 of the canonical JSON of the other three fields, so
a changed value that still builds a model and fits the weights (a flipped digit of ``dropout``) is
caught too.

``student.json`` is untrusted input when loading: ``name`` must be a registered student (never a
class path), ``init_args`` must be plain JSON values accepted by its constructor, no other keys are
allowed, the weights are read only from the folder's own ``model.safetensors`` and must match the
recorded sha256, and the spec must match its own recorded sha256 (checked last, so a crafted field
is reported by name first; files written before it existed have none). Every failure is a
:class:`~recdistill.errors.CheckpointError` naming the file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file
from torch import nn

from recdistill.atomic import atomic_path, sha256_file, write_json
from recdistill.errors import CheckpointError

WEIGHTS_NAME = "model.safetensors"
SPEC_NAME = "student.json"


def save_student(model: nn.Module, directory: str | Path) -> Path:
    """Write weights + constructor spec of a registered student into ``directory``."""
    name = getattr(model, "registry_name", None)
    init_args = getattr(model, "init_args", None)
    if name is None or init_args is None:
        raise TypeError(
            f"{type(model).__name__} is not a registered student (decorate it with @register_student)"
        )
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"student": name})
        digest = sha256_file(tmp)
    spec = {"name": name, "init_args": init_args, "weights_sha256": digest}
    write_json(directory / SPEC_NAME, {**spec, "spec_sha256": spec_digest(spec)})
    return directory


_SPEC_KEYS = {"name", "init_args", "weights_sha256", "spec_sha256"}


def spec_digest(spec: dict[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of a spec's fields other than ``spec_sha256``."""
    fields = {k: v for k, v in spec.items() if k != "spec_sha256"}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_student_spec(directory: str | Path) -> dict[str, Any]:
    """``student.json`` of ``directory``, checked for shape (see the module docstring)."""
    directory = Path(directory)
    spec_path = directory / SPEC_NAME
    if not spec_path.is_file():
        raise CheckpointError(f"{spec_path} not found: is {directory} a folder written by save_student "
                              f"(OUTPUT_DIR/student of `recdistill student fit`)?")
    try:
        spec = json.loads(spec_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{spec_path} is corrupt (not valid JSON: {exc})") from None
    if not isinstance(spec, dict):
        raise CheckpointError(f"{spec_path} must hold a JSON object, got {type(spec).__name__}")
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise CheckpointError(f"{spec_path}: unknown field(s) {unknown}; a student spec has {sorted(_SPEC_KEYS)}")
    if not isinstance(spec.get("name"), str):
        raise CheckpointError(f"{spec_path}: 'name' must be the registry name of a student, "
                              f"got {spec.get('name')!r:.80}")
    if not isinstance(spec.get("init_args"), dict):
        raise CheckpointError(f"{spec_path}: 'init_args' must be a JSON object of constructor arguments")
    for key in ("weights_sha256", "spec_sha256"):
        if spec.get(key) is not None and not isinstance(spec[key], str):
            raise CheckpointError(f"{spec_path}: '{key}' must be a hex string")
    return spec


def load_student(directory: str | Path) -> nn.Module:
    """Rebuild a student from ``student.json`` and load its safetensors weights (strict)."""
    from recdistill.student import UnknownStudentError, build_student

    directory = Path(directory)
    spec = read_student_spec(directory)
    spec_path = directory / SPEC_NAME
    try:
        model = build_student(spec["name"], **spec["init_args"])
    except (UnknownStudentError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{spec_path}: cannot build the student: {exc}") from None
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found: the student folder {directory} is incomplete")
    recorded = spec.get("weights_sha256")
    if recorded and sha256_file(weights) != recorded:
        raise CheckpointError(f"{weights} does not match the sha256 recorded in {spec_path}: the file is corrupt "
                              f"or was replaced")
    try:
        state = load_file(str(weights))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for a corrupt header
        raise CheckpointError(f"cannot read {weights}: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{weights} does not fit {spec_path}: {' '.join(str(exc).split())[:300]}") from None
    if spec.get("spec_sha256") is not None and spec_digest(spec) != spec["spec_sha256"]:
        raise CheckpointError(f"{spec_path} does not match its recorded spec_sha256: the file is corrupt or was "
                              f"edited (save the student again with save_student)")
    return model.eval()
