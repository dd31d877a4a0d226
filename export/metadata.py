"""What an exported ONNX file says about itself: metadata keys, the vocabulary sidecar, provenance.

Everything here needs only the standard library and numpy, so the serving runtime can read
it with torch absent. Metadata lives in the ONNX ``metadata_props`` (strings only; structured
values are JSON-encoded) and is read back through ONNX Runtime's ``custom_metadata_map``.

Files next to ``model.onnx``:

- ``model.provenance.json``: what was exported, from where, with which settings, and the parity
  gate's results (written even when the gate fails, so a failure is reported, never hidden).
- ``model.items.json``: the raw item ids (item index ``i`` <-> ``item_ids[i - 1]``), when the
  export was given a vocabulary; the runtime maps raw ids both ways with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from recdistill.atomic import item_space_hash  # noqa: F401  (re-exported: the runtime checks vocabularies)

# Keys of the ONNX metadata_props written by export_onnx (all values are strings).
KEY_FORMAT = "recdistill.format"  # format version of this metadata
KEY_STUDENT = "recdistill.student"  # registry name
KEY_KIND = "recdistill.kind"  # "sequential" | "ctr"
KEY_GRAPH = "recdistill.graph"  # "logits" | "serving" (masking + TopK inside) | "ctr"
KEY_INIT_ARGS = "recdistill.init_args"  # JSON constructor arguments
KEY_NUM_ITEMS = "recdistill.num_items"
KEY_MAX_LEN = "recdistill.max_len"  # sequence length the runtime pads/truncates to
KEY_TOPK = "recdistill.k"  # serving graphs: K of the in-graph TopK
KEY_INPUTS = "recdistill.inputs"  # JSON: [{name, dtype, shape}] with symbolic axes as strings
KEY_OUTPUTS = "recdistill.outputs"
KEY_OPSET = "recdistill.opset"
KEY_EXPORTER = "recdistill.exporter"
KEY_PARENT_SHA = "recdistill.parent_sha256"  # sha256 of the student's model.safetensors
KEY_ITEM_SPACE = "recdistill.item_space_sha256"
KEY_DATA_FINGERPRINT = "recdistill.data_fingerprint"
KEY_VERSION = "recdistill.version"
KEY_TORCH_VERSION = "recdistill.torch_version"
FORMAT_VERSION = "1"

JSON_KEYS = (KEY_INIT_ARGS, KEY_INPUTS, KEY_OUTPUTS)
INT_KEYS = (KEY_NUM_ITEMS, KEY_MAX_LEN, KEY_TOPK, KEY_OPSET)


def decode_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """``metadata_props`` (strings) -> typed dict keyed without the ``recdistill.`` prefix.

    Unknown keys are kept as strings; keys of other tools are dropped.
    """
    out: dict[str, Any] = {}
    for key, value in props.items():
        if not key.startswith("recdistill."):
            continue
        short = key.removeprefix("recdistill.")
        if key in JSON_KEYS:
            out[short] = json.loads(value)
        elif key in INT_KEYS:
            out[short] = int(value) if value not in ("", "None") else None
        else:
            out[short] = value
    return out


def encode_metadata(values: Mapping[str, Any]) -> dict[str, str]:
    """Full keys -> strings (JSON for structured values); ``None`` values are left out."""
    out = {}
    for key, value in values.items():
        if value is None:
            continue
        out[key] = json.dumps(value, sort_keys=True) if key in JSON_KEYS else str(value)
    return out


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """Decoded recdistill metadata of an ONNX file (reads only the model proto's header fields)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return decode_metadata({p.key: p.value for p in model.metadata_props})


def provenance_path(onnx_path: str | Path) -> Path:
    path = Path(onnx_path)
    return path.with_name(f"{path.stem}.provenance.json")


def items_path(onnx_path: str | Path) -> Path:
    path = Path(onnx_path)
    return path.with_name(f"{path.stem}.items.json")


def read_provenance(onnx_path: str | Path) -> dict[str, Any]:
    return json.loads(provenance_path(onnx_path).read_text())
