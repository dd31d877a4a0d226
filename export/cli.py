"""``recdistill export`` and ``recdistill profile``; the lead wires ``add_export_commands`` into cli.py.

    recdistill export --student DIR --output-dir OUT [--int8] [--fp16] [--serving --k 10] [--opset N]
    recdistill export --student DIR --output OUT.onnx ...
    recdistill profile [--onnx FILE] [--student DIR] --batch-sizes 1 256 --threads 1 2 --output OUT.json

Handlers take ``(args, rest)`` like the other commands and return an exit code; a parity
failure prints its message and returns 1 (the provenance JSON next to the output records it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_export_commands(subparsers: Any) -> None:
    """Add the ``export`` and ``profile`` sub-commands to an ``add_subparsers()`` object."""
    export = subparsers.add_parser("export", help="export a student to ONNX and run the parity gate")
    export.add_argument("--student", required=True, help="student folder (model.safetensors + student.json)")
    where = export.add_mutually_exclusive_group(required=True)
    where.add_argument("--output-dir", help="folder for model.onnx (+ model.int8.onnx / model.fp16.onnx)")
    where.add_argument("--output", help="ONNX file to write (provenance JSON next to it)")
    export.add_argument("--int8", action="store_true",
                        help="also write a dynamic-int8 copy (item table per-row int8), gated on top-K agreement")
    export.add_argument("--int8-item-table", choices=["per_row", "per_tensor", "none"], default="per_row",
                        help="how the int8 copy stores the embedding tables: the item table (sequential) or the "
                             "field tables (CTR); none: fp32 tables, int8 MatMul/Gemm only")
    export.add_argument("--fp16", action="store_true", help="also write an fp16 copy, gated on top-K agreement")
    export.add_argument("--min-topk-agreement", type=float, default=0.9,
                        help="int8/fp16 gate: mean top-10 overlap with the fp32 file (CTR: max probability "
                             "difference 0.02)")
    export.add_argument("--serving", action="store_true", help="history masking + TopK inside the graph")
    export.add_argument("--k", type=int, default=10, help="serving graph: K of the in-graph TopK")
    export.add_argument("--opset", type=int, default=None, help="ONNX opset (default 17)")
    export.add_argument("--max-len", type=int, default=None, help="padding length (default: the student's max_len)")
    export.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    export.add_argument("--atol", type=float, default=None, help="parity: absolute tolerance (default 1e-4)")
    export.add_argument("--data-fingerprint", default=None, help="dataset fingerprint to record (data.json)")
    export.add_argument("--item-ids", default=None,
                        help="JSON file with the raw item ids (a list, or {'item_ids': [...]}) for id mapping")
    export.add_argument("--no-parity", action="store_true", help="skip the parity gate (recorded as unchecked)")
    export.set_defaults(handler=export_command)

    profile = subparsers.add_parser("profile", help="latency percentiles of a student and/or ONNX file")
    profile.add_argument("--onnx", default=None, help="ONNX file (ONNX Runtime)")
    profile.add_argument("--student", default=None, help="student folder (PyTorch eager; exported if no --onnx)")
    profile.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 256])
    profile.add_argument("--threads", type=int, nargs="+", default=[1])
    profile.add_argument("--seq-len", type=int, default=None, help="sequence / history length (default 50, capped)")
    profile.add_argument("--warmup", type=int, default=10)
    profile.add_argument("--min-iters", type=int, default=50)
    profile.add_argument("--min-seconds", type=float, default=1.0)
    profile.add_argument("--output", required=True, help="JSON report (Markdown written beside it)")
    profile.set_defaults(handler=profile_command)


def export_command(args: argparse.Namespace, rest: list[str] | None = None) -> int:
    from recdistill.export.onnx_export import DEFAULT_OPSET, export_onnx
    from recdistill.export.parity import DEFAULT_ATOL, ParityError

    output = Path(args.output) if args.output else Path(args.output_dir) / "model.onnx"
    item_ids = None
    if args.item_ids:
        from recdistill.errors import ConfigError

        try:
            loaded = json.loads(Path(args.item_ids).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--item-ids {args.item_ids} is not valid JSON ({exc})") from None
        item_ids = loaded.get("item_ids") if isinstance(loaded, dict) else loaded
        if not isinstance(item_ids, list):
            raise ConfigError(f"--item-ids {args.item_ids} must hold a JSON list of raw item ids, or "
                              f"{{\"item_ids\": [...]}}")
    try:
        result = export_onnx(
            args.student, output, opset=args.opset or DEFAULT_OPSET, serving=args.serving, k=args.k,
            max_len=args.max_len, exporter=args.exporter, item_ids=item_ids, data_fingerprint=args.data_fingerprint,
            parity=not args.no_parity, atol=DEFAULT_ATOL if args.atol is None else args.atol,
        )
    except ParityError as error:
        print(f"export failed: {error}", file=sys.stderr)
        return 1
    print(result.summary())
    return _reduced_precision(args, result.path)


CTR_MAX_PROBABILITY_DIFF = 0.02


def _reduced_precision(args: argparse.Namespace, fp32: Path) -> int:
    """The ``--int8`` / ``--fp16`` copies next to the fp32 file, each gated against it."""
    from recdistill.atomic import write_json
    from recdistill.compress.int8_onnx import int8_onnx, topk_agreement
    from recdistill.compress.onnx_quant import convert_fp16, quant_config_path
    from recdistill.export.onnx_export import resolve_student

    status = 0
    todo = [("int8", args.int8), ("fp16", args.fp16)]
    for kind, wanted in todo:
        if not wanted:
            continue
        path = fp32.with_name(f"{fp32.stem}.{kind}.onnx")
        if kind == "int8":
            config = int8_onnx(resolve_student(args.student)[0], fp32, path, item_table=args.int8_item_table)
        else:
            config = convert_fp16(fp32, path)
        agreement = topk_agreement(fp32, path)
        if agreement["metric"] == "max_probability_diff":
            passed = agreement["value"] <= CTR_MAX_PROBABILITY_DIFF
        else:
            passed = agreement["value"] >= args.min_topk_agreement
        config.update(agreement=agreement, passed=passed)
        write_json(quant_config_path(path), config)
        size = path.stat().st_size / fp32.stat().st_size
        verdict = "passed" if passed else "FAILED"
        print(f"{kind}: {path} [{path.stat().st_size / 1024:.1f} KiB, {size:.2f}x fp32]; agreement "
              f"{agreement['metric']} {agreement['value']:.3f} {verdict}")
        if not passed:
            status = 1
    return status


def profile_command(args: argparse.Namespace, rest: list[str] | None = None) -> int:
    from recdistill.export.profile_suite import profile_models, write_report

    if args.onnx is None and args.student is None:
        print("profile: give --onnx FILE and/or --student DIR", file=sys.stderr)
        return 2
    report = profile_models(
        args.student, args.onnx, batch_sizes=args.batch_sizes, threads=args.threads, seq_len=args.seq_len,
        warmup=args.warmup, min_iters=args.min_iters, min_seconds=args.min_seconds,
    )
    json_path, markdown_path = write_report(report, args.output)
    fastest = min(report["runs"], key=lambda r: r["latency_ms"]["p50"])
    print(f"profiled {len(report['runs'])} runs -> {json_path} + {markdown_path.name}; "
          f"fastest p50 {fastest['latency_ms']['p50']:.3f} ms ({fastest['label']}, batch {fastest['batch_size']}, "
          f"{fastest['threads']} thread(s))")
    return 0
