"""Store a weight once when the exporter wrote it twice: as a table and as its transposed copy.

The TorchScript exporter constant-folds ``item_embedding.weight.T`` (SASRec's and GRU4Rec's
scoring reads the item table transposed) into a second fp32 initializer, so the file holds the
largest tensor of a recommender twice. ``share_transposed_tables`` finds every initializer that is
exactly the transpose of another 2-D initializer and rewires its consumers to the original:
``MatMul(x, Wᵀ)`` with a rank-2 ``x`` (learned by one probe run on the export inputs) becomes ``Gemm(x, W, transB=1)`` (no copy at run time);
any other consumer reads ``Transpose(W)``. The copy is then dropped. Logits are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _probed_ranks(model: onnx.ModelProto, names: list[str], feed: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Ranks of intermediate values, by running a copy of ``model`` that also outputs them (ONNX
    shape inference loses the rank after some exported ops; the rank does not depend on the
    dynamic batch and sequence sizes, so one run on the export inputs settles it)."""
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    values = session.run(names, {k: v for k, v in feed.items() if k in inputs})
    return {n: np.asarray(v).ndim for n, v in zip(names, values)}


def share_transposed_tables(model: onnx.ModelProto, feed: Mapping[str, np.ndarray] | None = None,
                            min_elements: int = 1024) -> list[str]:
    """Rewrite ``model`` in place (see module docstring); returns the names of the dropped copies.
    ``feed``: example inputs by name, used to learn the rank of a scoring MatMul's input (without
    it, every consumer reads a ``Transpose``)."""
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if len(t.dims) == 2}
    by_shape: dict[tuple[int, ...], list[str]] = {}
    for name, array in arrays.items():
        by_shape.setdefault(array.shape, []).append(name)
    copies: dict[str, str] = {}  # transposed copy -> original
    for name, array in arrays.items():
        if array.size < min_elements or name in copies:
            continue
        for other in by_shape.get(array.shape[::-1], []):
            if other != name and other not in copies and name not in copies.values() \
                    and np.array_equal(arrays[other], array.T):
                copies[other] = name
    if not copies:
        return []
    matmul_inputs = [n.input[0] for n in model.graph.node
                     if n.op_type == "MatMul" and len(n.input) == 2 and n.input[1] in copies]
    ranks = _probed_ranks(model, sorted(set(matmul_inputs)), feed) if feed is not None and matmul_inputs else {}
    transposed: dict[str, str] = {}
    new_nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name not in copies:
                continue
            if node.op_type == "MatMul" and i == 1 and ranks.get(node.input[0]) == 2:
                node.op_type = "Gemm"
                node.input[1] = copies[name]
                node.attribute.append(helper.make_attribute("transB", 1))
                continue
            if name not in transposed:
                transposed[name] = f"{copies[name]}_transposed"
                new_nodes.append(helper.make_node("Transpose", [copies[name]], [transposed[name]], perm=[1, 0],
                                                  name=f"{copies[name]}_transpose"))
            node.input[i] = transposed[name]
    for k, node in enumerate(new_nodes):
        model.graph.node.insert(k, node)
    keep = [t for t in model.graph.initializer if t.name not in copies]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return sorted(copies)


def unshare_lookup_tables(model: onnx.ModelProto, ops: tuple[str, ...] = ("Gemm", "MatMul")) -> list[str]:
    """Give ``ops`` consumers their own copy of any initializer that a ``Gather`` also reads.

    For quantizers that pick one quantization axis per initializer (ONNX Runtime's QDQ static
    quantization with per-channel weights): a table shared by the lookup (``Gather``) and the
    scoring ``Gemm`` would be quantized along the scoring axis and break the lookup. Returns the
    names that were split."""
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    inits = {t.name: t for t in model.graph.initializer}
    split = sorted(n for n, kinds in consumers.items() if n in inits and "Gather" in kinds and kinds & set(ops))
    for name in split:
        copy = onnx.TensorProto()
        copy.CopyFrom(inits[name])
        copy.name = f"{name}_scoring"
        model.graph.initializer.append(copy)
        for node in model.graph.node:
            if node.op_type in ops:
                for i, inp in enumerate(node.input):
                    if inp == name:
                        node.input[i] = copy.name
    return split

