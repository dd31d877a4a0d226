"""``recdistill compress``; the lead wires ``add_compress_commands`` into cli.py.

    recdistill compress --student DIR --config recipes/compress_sasrec.yaml --output-dir OUT [--set KEY=VALUE ...]

Runs the configured steps (``compress/pipeline.py``) and writes each artefact plus
``OUT/compress.json`` with every variant's gate record. The handler takes ``(args, rest)`` like
the other commands; it returns 0 when it ran (a variant failing the gate is reported in the JSON
and on stdout, not an error) and 2 on a bad config.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml


def add_compress_commands(subparsers: Any) -> None:
    """Add the ``compress`` sub-command to an ``add_subparsers()`` object."""
    parser = subparsers.add_parser("compress", help="prune / recover / quantize / PQ a student, each gated")
    parser.add_argument("--student", required=True, help="student folder (model.safetensors + student.json)")
    parser.add_argument("--config", required=True, help="YAML (see recipes/compress_sasrec.yaml)")
    parser.add_argument("--output-dir", required=True, help="folder for the artefacts and compress.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, dotted key, YAML value (e.g. data.dataset=my.csv)")
    parser.set_defaults(handler=compress_command)


def load_config(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    config = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a compress config is a YAML mapping")
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {part} is not a mapping")
        node[leaf] = yaml.safe_load(value)
    return config


def compress_command(args: argparse.Namespace, rest: list[str] | None = None) -> int:
    from recdistill.compress.pipeline import run_compress

    try:
        config = load_config(args.config, args.set)
    except (OSError, ValueError, yaml.YAMLError) as error:
        print(f"compress: {error}", file=sys.stderr)
        return 2
    summary = run_compress(args.student, config, args.output_dir)
    for record in summary["variants"]:
        verdict = "passed" if record["passed"] else "FAILED: " + "; ".join(record["reasons"])
        quality = (f"top-10 overlap {record['top10_overlap']:.3f}" if "top10_overlap" in record
                   else f"AUC delta {record.get('auc_delta', float('nan')):+.4f}")
        print(f"{record['name']:<34} {quality}  size {record.get('size_bytes') or 0:>10} B  "
              f"p50 {record.get('latency_p50_ms') or float('nan'):.3f} ms  {verdict}")
    choice = summary.get("item_table_choice")
    if choice:
        print(f"item table: {choice['chosen'] or 'none chosen'} ({choice['why']})")
    print(f"wrote {Path(args.output_dir) / 'compress.json'}")
    return 0
