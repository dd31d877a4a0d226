"""Stage bookkeeping for multi-stage jobs: a re-run skips stages whose inputs did not change.

Each stage folder gets ``stage.json`` = ``{"stage", "inputs_hash", "inputs", "outputs"}``,
written last and atomically; a stage whose ``stage.json`` is missing or whose input hash
differs (changed recipe, override or upstream artefact) is run again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

from recdistill.atomic import write_json

log = logging.getLogger(__name__)
STAGE_FILE = "stage.json"


def inputs_hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()


def run_stage(name: str, directory: Path, inputs: dict[str, Any],
              work: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work(directory)`` unless ``directory/stage.json`` records the same inputs."""
    marker = directory / STAGE_FILE
    digest = inputs_hash(inputs)
    if marker.exists():
        record = json.loads(marker.read_text())
        if record.get("inputs_hash") == digest:
            log.info("stage %s: inputs unchanged, reusing %s", name, directory)
            print(f"[{name}] up to date ({directory})")
            return record["outputs"]
        print(f"[{name}] inputs changed since the last run: rebuilding {directory}")
    print(f"[{name}] running -> {directory}")
    outputs = work(directory)
    write_json(marker, {"stage": name, "inputs_hash": digest, "inputs": inputs, "outputs": outputs})
    return outputs
