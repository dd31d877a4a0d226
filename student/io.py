"""Save and load a trained student without Lightning or the recipe that made it.

A student folder holds ``model.safetensors`` (weights) and ``student.json``
(``{"name": registry name, "init_args": constructor arguments}``), written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import nn

from recdistill.atomic import atomic_path, write_json

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
    write_json(directory / SPEC_NAME, {"name": name, "init_args": init_args})
    return directory


def load_student(directory: str | Path) -> nn.Module:
    """Rebuild a student from ``student.json`` and load its safetensors weights (strict)."""
    from recdistill.student import build_student

    directory = Path(directory)
    spec_path = directory / SPEC_NAME
    if not spec_path.exists():
        raise FileNotFoundError(f"{spec_path} not found: is {directory} a folder written by save_student?")
    spec = json.loads(spec_path.read_text())
    model = build_student(spec["name"], **spec["init_args"])
    model.load_state_dict(load_file(str(directory / WEIGHTS_NAME)), strict=True)
    return model.eval()
