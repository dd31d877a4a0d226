"""ONNX Runtime quantization of an exported student: dynamic int8, static int8, fp16.

- ``quantize_dynamic_onnx``: optimum's ``ORTQuantizer`` + ``AutoQuantizationConfig`` (int8
  weights, activations quantized at run time -> ``DynamicQuantizeLinear`` + ``MatMulInteger``).
  ``operators`` picks the op types; adding ``"Gather"`` quantizes the embedding lookups, which
  ONNX Runtime does with ONE scale for the whole table even with ``per_channel`` (the
  per-tensor policy that ``compress/quantize.py``'s per-row ``QuantizedEmbedding`` competes with).
  If optimum fails on a graph, ``onnxruntime.quantization.quantize_dynamic`` is used with the
  same settings and the reason is recorded in the config (``"tool"``, ``"fallback_reason"``).
- ``quantize_static_onnx``: ``onnxruntime.quantization.quantize_static`` (QDQ format), calibrated
  on the given feeds (validation batches). Not optimum's ``ORTQuantizer.fit/quantize``: its
  calibration path expects a ``datasets.Dataset`` of model inputs and a preprocessing function,
  whereas our calibration data are tensors from the data module; the ORT call is the same engine.
- ``convert_fp16``: ``onnxruntime.transformers.float16.convert_float_to_float16`` with fp32
  inputs/outputs kept (``keep_io_types``).

Each writes ``<artefact>.quant.json`` next to the ONNX file: method, tool, versions, settings and
the quantized-op counts (``count_ops``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from recdistill.atomic import atomic_path, write_json
from recdistill.export.compact import compact_file, compact_names

QUANT_OPS = frozenset({
    "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QuantizeLinear", "DequantizeLinear",
    "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QLinearMatMul", "QLinearConv", "QLinearAdd",
    "QLinearMul", "QGemm", "QAttention", "QLinearSoftmax", "QLinearConcat", "QLinearGlobalAveragePool",
})
DEFAULT_OPERATORS = ("MatMul", "Gemm")


def count_ops(path: str | Path) -> dict[str, Any]:
    """``{"all": {op: n}, "quantized": {op: n}, "int8_initializers": n}`` for an ONNX file."""
    model = onnx.load(str(path))
    ops = Counter(node.op_type for node in model.graph.node)
    int8 = sum(1 for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8))
    return {"all": dict(sorted(ops.items())), "quantized": {k: v for k, v in sorted(ops.items()) if k in QUANT_OPS},
            "int8_initializers": int8}


def quant_config_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".quant.json")


def _versions() -> dict[str, str]:
    import onnxruntime

    versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__}
    try:
        import optimum.version

        versions["optimum"] = optimum.version.__version__
    except (ImportError, AttributeError):  # only a provenance field
        pass
    return versions


def _write_config(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    config = {**config, "file": path.name, "bytes": path.stat().st_size, "ops": count_ops(path),
              "versions": _versions()}
    write_json(quant_config_path(path), config)
    return config


def quantize_dynamic_onnx(src: str | Path, dst: str | Path, *, per_channel: bool = False,
                          operators: Sequence[str] = DEFAULT_OPERATORS, use_optimum: bool = True,
                          nodes_to_exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Dynamic int8 ``src`` -> ``dst``; returns (and writes) the quantization config.

    ``nodes_to_exclude``: node names of ``src`` (the names before quantization renames anything).
    An item table that the lookup and the scoring share is split first (``unshared_source``).
    """
    with tempfile.TemporaryDirectory(prefix="recdistill-dynamic-") as scratch, atomic_path(dst) as tmp:
        source, split = unshared_source(src, scratch)  # the file appears at dst complete (compacted) or not at all
        config = _quantize_dynamic(source, tmp, per_channel, operators, use_optimum, nodes_to_exclude)
        compact_file(tmp)
    return _write_config(Path(dst), {**config, "source": Path(src).name, "tables_split_for_scoring": split})


def unshared_source(src: str | Path, scratch: str | Path) -> tuple[Path, list[str]]:
    """``src``, or a copy in ``scratch`` whose shared lookup/scoring tables are split.

    ONNX Runtime's quantizers assume one consumer role per weight: rewriting ``Gemm(transB=1)``
    transposes the initializer in place (the lookup then reads a transposed table) and QDQ picks
    one per-channel axis per initializer. The split restores the exporter's original layout (a
    scoring copy), so the quantized file holds the table for scoring and for the lookup.
    """
    from recdistill.export.shared_tables import unshare_lookup_tables

    model = onnx.load(str(src))
    split = unshare_lookup_tables(model)
    if not split:
        return Path(src), []
    path = Path(scratch) / Path(src).name
    onnx.save(model, str(path))
    return path, split


def _quantize_dynamic(src: Path, dst: Path, per_channel: bool, operators: Sequence[str], use_optimum: bool,
                      nodes_to_exclude: Sequence[str]) -> dict[str, Any]:
    settings = {"method": "dynamic_int8", "per_channel": per_channel, "operators": list(operators),
                "weight_type": "QInt8", "source": src.name, "nodes_to_exclude": list(nodes_to_exclude)}
    fallback = None
    if use_optimum:
        try:
            _optimum_dynamic(src, dst, per_channel, operators, nodes_to_exclude)
            return {**settings, "tool": "optimum.ORTQuantizer + AutoQuantizationConfig.avx2"}
        except Exception as exc:  # noqa: BLE001 - any optimum failure falls back, and is recorded
            fallback = f"{type(exc).__name__}: {exc}"[:500]
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=per_channel, weight_type=QuantType.QInt8,
                     op_types_to_quantize=list(operators), nodes_to_exclude=list(nodes_to_exclude))
    return {**settings, "tool": "onnxruntime.quantization.quantize_dynamic", "fallback_reason": fallback}


def _optimum_dynamic(src: Path, dst: Path, per_channel: bool, operators: Sequence[str],
                     nodes_to_exclude: Sequence[str]) -> None:
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    with tempfile.TemporaryDirectory(dir=dst.parent) as tmp:
        shutil.copy(src, Path(tmp) / "model.onnx")
        quiet = logging.getLogger("optimum.onnxruntime.quantization")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # "Could not load the config": a bare ONNX file has no HF config
        try:
            quantizer = ORTQuantizer.from_pretrained(tmp, file_name="model.onnx")
        finally:
            quiet.setLevel(level)
        qconfig = AutoQuantizationConfig.avx2(is_static=False, per_channel=per_channel,
                                              operators_to_quantize=list(operators),
                                              nodes_to_exclude=list(nodes_to_exclude))
        out_dir = Path(tmp) / "out"
        quantizer.quantize(save_dir=out_dir, quantization_config=qconfig)
        produced = [p for p in out_dir.glob("*.onnx")]
        if len(produced) != 1:
            raise RuntimeError(f"ORTQuantizer wrote {[p.name for p in produced]}, expected one .onnx file")
        os.replace(produced[0], dst)


def unfold_int8_item_table(src: str | Path, dst: str | Path) -> list[str]:
    """Make the scoring MatMul read the int8 item table instead of a folded fp32 copy.

    The TorchScript exporter constant-folds ``(qweight.float() * scale).T`` of a
    ``QuantizedEmbedding`` into an fp32 ``[d, N]`` initializer, so the file would hold the table
    twice (int8 for the lookup, fp32 for scoring) and dynamic quantization would re-quantize the
    copy per tensor. This replaces every such initializer (checked numerically) by
    ``Transpose(Mul(Cast(qweight), scale))``. Returns the names of the MatMul/Gemm nodes that now
    read the dequantized table (pass them as ``nodes_to_exclude``: their weight is no longer an
    initializer, and quantizing it at run time would be per tensor again).
    """
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    qname = next((n for n, t in inits.items() if n.endswith("item_embedding.qweight")), None)
    sname = next((n for n, t in inits.items() if n.endswith("item_embedding.scale")), None)
    if qname is None or sname is None:
        raise ValueError(f"{src}: no QuantizedEmbedding item table (item_embedding.qweight/.scale) in the graph")
    table = (numpy_helper.to_array(inits[qname]).astype(np.float32) * numpy_helper.to_array(inits[sname])).T
    folded = [n for n, t in inits.items() if tuple(t.dims) == table.shape and t.data_type == onnx.TensorProto.FLOAT
              and np.allclose(numpy_helper.to_array(t), table, rtol=0, atol=1e-6)]
    consumers: list[str] = []
    if folded:
        out = "item_table_dequantized_t"
        nodes = [helper.make_node("Cast", [qname], ["item_table_f32"], to=onnx.TensorProto.FLOAT,
                                  name="item_table_cast"),
                 helper.make_node("Mul", ["item_table_f32", sname], ["item_table_dequantized"],
                                  name="item_table_scale"),
                 helper.make_node("Transpose", ["item_table_dequantized"], [out], perm=[1, 0],
                                  name="item_table_transpose")]
        for node in model.graph.node:
            for i, name in enumerate(node.input):
                if name in folded:
                    node.input[i] = out
                    node.name = node.name or f"item_table_score_{len(consumers)}"
                    consumers.append(node.name)
        for name in folded:
            model.graph.initializer.remove(inits[name])
        for k, node in enumerate(nodes):
            model.graph.node.insert(k, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return consumers


class _FeedReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a list of input feeds."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> None:
        self._feeds = iter([dict(f) for f in feeds])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:  # not needed for one pass
        pass


def quantize_static_onnx(src: str | Path, dst: str | Path, calibration_feeds: Sequence[Mapping[str, np.ndarray]], *,
                         per_channel: bool = True, operators: Sequence[str] = DEFAULT_OPERATORS,
                         method: str = "MinMax") -> dict[str, Any]:
    """Static int8 (QDQ) ``src`` -> ``dst`` calibrated on ``calibration_feeds``; returns the config."""
    from onnxruntime.quantization import (
        CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static,
    )

    if not calibration_feeds:
        raise ValueError("static quantization needs at least one calibration batch")
    src, dst = Path(src), Path(dst)

    class Reader(_FeedReader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="recdistill-static-") as scratch, atomic_path(dst) as tmp:
        source, split = unshared_source(src, scratch)  # the file appears at dst complete (compacted) or not at all
        quantize_static(str(source), str(tmp), Reader(calibration_feeds), quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(operators), calibrate_method=getattr(CalibrationMethod, method))
        compact_file(tmp)
    return _write_config(dst, {"method": "static_int8", "tool": "onnxruntime.quantization.quantize_static",
                               "why_not_optimum": "ORTQuantizer.fit needs a datasets.Dataset + preprocessing; "
                                                  "calibration feeds here are tensors from the data module",
                               "format": "QDQ", "per_channel": per_channel, "operators": list(operators),
                               "activation_type": "QUInt8", "weight_type": "QInt8", "calibration_method": method,
                               "calibration_batches": len(calibration_feeds), "source": src.name,
                               "tables_split_for_scoring": split})


def convert_fp16(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """fp16 weights and compute, fp32 inputs/outputs; returns the config."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src, dst = Path(src), Path(dst)
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    compact_names(model)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return _write_config(dst, {"method": "fp16", "tool": "onnxruntime.transformers.float16.convert_float_to_float16",
                               "keep_io_types": True, "source": src.name})
