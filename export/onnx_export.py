"""``export_onnx``: any student -> a checked, parity-gated ONNX file with metadata and provenance.

Exporter: the TorchScript exporter (``torch.onnx.export(..., dynamo=False)`` with
``dynamic_axes``) is the default for every student. On torch 2.13 the dynamo exporter
(``torch.export``) specialises ``nn.GRU`` to the example's sequence length, so a GRU4Rec export
fails at other lengths in ONNX Runtime, and it takes 1-5 s per tiny student against ~0.2 s. The
dynamo exporter remains available (``exporter="dynamo"``, with ``torch.export.Dim`` dynamic
shapes) for the other students; for GRU4Rec it is refused with that reason.

Steps, all before anything lands at ``path``: export to a temporary file next to it,
attach metadata (``export/metadata.py``), ``onnx.checker.check_model(full_check=True)``, run the
parity gate (``export/parity.py``) on the temporary file, then ``os.replace`` it onto ``path``.
The provenance JSON is written in both outcomes; on a parity failure the ONNX file is not
written and ``ParityError`` is raised.
"""

from __future__ import annotations

import json
import platform
from collections import Counter
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from recdistill.atomic import atomic_path, sha256_file, write_json
from recdistill.errors import ConfigError
from recdistill.export import metadata as M
from recdistill.export.graphs import (
    CTR, CTRGraph, dynamic_axes, example_inputs, num_items, student_kind, student_max_len,
    student_name, wrap,
)
from recdistill.export.compact import compact_names
from recdistill.export.shared_tables import share_transposed_tables
from recdistill.export.parity import (
    DEFAULT_ATOL, DEFAULT_RTOL, ParityError, ParityResult, check_parity, default_shapes,
)

DEFAULT_OPSET = 17
EXPORTERS = ("torchscript", "dynamo")
EXPORT_BATCH = 2  # the parity grid uses other batch sizes
EXPORT_LENGTH = 7


@dataclass
class ExportResult:
    path: Path
    provenance_path: Path
    provenance: dict[str, Any]
    parity: ParityResult | None

    def summary(self) -> str:
        """One line: student, graph, file, size, parity verdict."""
        p = self.provenance
        size_kb = p["file"]["bytes"] / 1024
        if self.parity is None:
            gate = "parity skipped"
        else:
            gate = (f"parity {'passed' if self.parity.passed else 'FAILED'} on {len(self.parity.shapes)} shapes "
                    f"(max |diff| {self.parity.max_abs_diff:.2g})")
        return f"exported {p['student']} ({p['graph']}, opset {p['opset']}) -> {self.path} [{size_kb:.1f} KiB]; {gate}"


def resolve_student(student: nn.Module | str | Path) -> tuple[nn.Module, Path | None, str | None]:
    """A module, or a student folder (loaded with ``load_student``; its weights' sha256 is the parent checksum)."""
    if isinstance(student, nn.Module):
        return student.eval(), None, None
    from recdistill.student.io import WEIGHTS_NAME, load_student

    folder = Path(student)
    return load_student(folder), folder, sha256_file(folder / WEIGHTS_NAME)


def export_onnx(
    student: nn.Module | str | Path,
    path: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    serving: bool = False,
    k: int = 10,
    max_len: int | None = None,
    exporter: str = "torchscript",
    item_ids: Sequence[Any] | None = None,
    item_space_sha256: str | None = None,
    data_fingerprint: str | None = None,
    parity: bool = True,
    parity_shapes: Sequence[tuple[int, int]] | None = None,
    atol: float | None = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    min_topk_overlap: float | None = None,
    extra_provenance: dict[str, Any] | None = None,
) -> ExportResult:
    """Export ``student`` (module or folder) to ``path`` with dynamic batch and sequence axes.

    ``serving=True``: sequential students get history masking + ``TopK(k)`` in the graph
    (outputs ``scores``, ``item_ids``); CTR students get a ``probability`` output beside ``logit``.
    ``max_len``: the length the runtime pads to (default: the student's ``max_len``, else 50).
    ``item_ids``: the dataset's raw item ids (index ``i`` <-> ``item_ids[i - 1]``); their hash is
    recorded and they are written to ``<stem>.items.json`` for the runtime.
    Raises ``ParityError`` (ONNX file not written, provenance written) when the gate fails.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    model, folder, parent_sha = resolve_student(student)
    name, kind = student_name(model), student_kind(model)
    if exporter == "dynamo" and name == "gru4rec":
        raise ConfigError("gru4rec: the dynamo exporter fixes nn.GRU's sequence length; use exporter='torchscript'")
    length = max_len or student_max_len(model)
    if item_ids is not None:
        item_ids = list(item_ids)
        computed = M.item_space_hash(item_ids)
        if item_space_sha256 is not None and item_space_sha256 != computed:
            raise ConfigError("item_space_sha256 does not match the given item_ids")
        item_space_sha256 = computed
        if kind != CTR and len(item_ids) != num_items(model):
            raise ConfigError(f"{len(item_ids)} item ids for a student of {num_items(model)} items: give the "
                              f"item ids of the dataset the student was trained on")
    graph = wrap(model, serving=serving, k=k)
    graph_kind = "ctr" if kind == CTR else ("serving" if serving else "logits")
    path = Path(path)
    shapes = list(parity_shapes) if parity_shapes is not None else default_shapes(model, length)
    inputs = example_inputs(model, EXPORT_BATCH, min(EXPORT_LENGTH, length), seed=0)

    with atomic_path(path) as tmp:
        _torch_export(graph, inputs, tmp, opset, exporter)
        proto = onnx.load(str(tmp))
        actual_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), opset)
        values = {
            M.KEY_FORMAT: M.FORMAT_VERSION,
            M.KEY_STUDENT: name,
            M.KEY_KIND: kind,
            M.KEY_GRAPH: graph_kind,
            M.KEY_INIT_ARGS: getattr(model, "init_args", None),
            M.KEY_NUM_ITEMS: num_items(model),
            M.KEY_MAX_LEN: length,
            M.KEY_TOPK: k if graph_kind == "serving" else None,
            M.KEY_INPUTS: _schema(proto.graph.input),
            M.KEY_OUTPUTS: _schema(proto.graph.output),
            M.KEY_OPSET: actual_opset,
            M.KEY_EXPORTER: exporter,
            M.KEY_PARENT_SHA: parent_sha,
            M.KEY_ITEM_SPACE: item_space_sha256,
            M.KEY_DATA_FINGERPRINT: data_fingerprint,
            M.KEY_VERSION: _recdistill_version(),
            M.KEY_TORCH_VERSION: torch.__version__,
        }
        names = [i.name for i in proto.graph.input]
        shared = share_transposed_tables(proto, dict(zip(names, (t.numpy() for t in inputs))))
        compact_names(proto)  # n0.., v0..: names are a large share of a small model's file
        onnx.helper.set_model_props(proto, M.encode_metadata(values))
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
        provenance = {
            "student": name,
            "kind": kind,
            "graph": graph_kind,
            "source": str(folder) if folder is not None else None,
            "parent_sha256": parent_sha,
            "init_args": getattr(model, "init_args", None),
            "opset": actual_opset,  # the dynamo exporter may raise a requested opset below 18
            "requested_opset": opset,
            "exporter": exporter,
            "dynamic_axes": dynamic_axes(graph),
            "export_shape": [EXPORT_BATCH, min(EXPORT_LENGTH, length)],
            "max_len": length,
            "k": k if graph_kind == "serving" else None,
            "inputs": values[M.KEY_INPUTS],
            "op_counts": dict(sorted(Counter(node.op_type for node in proto.graph.node).items())),
            "outputs": values[M.KEY_OUTPUTS],
            "item_space_sha256": item_space_sha256,
            "data_fingerprint": data_fingerprint,
            "quantization": None,
            "shared_tables": shared,  # transposed copies the exporter folded, now read from the original
            "versions": {"recdistill": values[M.KEY_VERSION], "torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": _ort_version(), "python": platform.python_version()},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            **(extra_provenance or {}),
        }
        result: ParityResult | None = None
        if parity:
            try:
                result = check_parity(model, tmp, shapes, atol, min_topk_overlap, rtol=rtol)
            except ParityError as error:
                provenance.update(parity=error.result.to_dict() if error.result else None, status="failed",
                                  file=None)
                write_json(M.provenance_path(path), provenance)
                raise
        provenance["parity"] = result.to_dict() if result is not None else None
        provenance["status"] = "passed" if result is not None else "unchecked"
        provenance["file"] = {"name": path.name, "bytes": tmp.stat().st_size, "sha256": sha256_file(tmp)}
    if item_ids is not None:
        write_json(M.items_path(path), {"item_space_sha256": item_space_sha256, "item_ids": item_ids})
    write_json(M.provenance_path(path), provenance)
    return ExportResult(path, M.provenance_path(path), provenance, result)


def _torch_export(graph: nn.Module, inputs: tuple[torch.Tensor, ...], path: Path, opset: int, exporter: str) -> None:
    names = dict(input_names=list(graph.input_names), output_names=list(graph.output_names), opset_version=opset)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # nn.GRU's own input-size checks
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        # nn.GRU: the exporter warns that batch sizes other than the example's may fail unless h0 is an
        # input; the students never pass h0 (zero state), and the parity grid runs batches 1, 3 and 17.
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.export's pytree deprecations
        if exporter == "torchscript":
            torch.onnx.export(graph, inputs, str(path), dynamo=False, dynamic_axes=dynamic_axes(graph), **names)
        else:
            torch.onnx.export(graph, inputs, str(path), dynamo=True, dynamic_shapes=_dynamic_shapes(graph),
                              verbose=False, optimize=True, **names)


def _dynamic_shapes(graph: nn.Module) -> dict[str, dict[int, Any]]:
    batch = torch.export.Dim("batch")
    if isinstance(graph, CTRGraph):
        return {"sparse": {0: batch}, "dense": {0: batch}, "history": {0: batch, 1: torch.export.Dim("history")}}
    limit = getattr(graph.student, "max_len", None)
    length = torch.export.Dim("sequence", max=limit) if limit else torch.export.Dim("sequence")
    return {"input_ids": {0: batch, 1: length}}


def _schema(values: Any) -> list[dict[str, Any]]:
    """``[{name, dtype, shape}]`` of graph inputs/outputs; symbolic axes as their names."""
    out = []
    for value in values:
        tensor = value.type.tensor_type
        shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in tensor.shape.dim]
        out.append({"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
                    "shape": shape})
    return out


def _recdistill_version() -> str:
    import recdistill

    return str(getattr(recdistill, "__version__", "unknown"))


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def describe(path: str | Path) -> str:
    """Pretty JSON of an exported file's recdistill metadata."""
    return json.dumps(M.read_onnx_metadata(path), indent=2, sort_keys=True)
