"""``run_compress``: the configured compression steps on one saved student, each artefact gated.

Config (``recipes/compress_sasrec.yaml`` documents every key): ``data`` (data module arguments
+ ``eval_split``, ``calibration_split``, ``calibration_batches``, ``max_eval_batches``), ``gate``
(``GateThresholds``), ``latency`` (``batch_size``, ``runs``, ``threads``) and ``steps``, any of
``prune``, ``recover``, ``torch_int8``, ``onnx``, ``pq`` (post-hoc k-means PQ of the trained item table)
and ``pq_joint`` (RecJPQ: the student retrained from scratch with a PQ item table whose codes are
assigned before training, ``compress/pq_train.py``); a missing step is not run.

Output folder::

    OUT/compress.json          # config, every variant's gate record, the item-table choice
    OUT/pruned/                # plain student folders (load_student)
    OUT/pruned_recovered/
    OUT/pq/                    # PQ student (load_pq_student)
    OUT/pq_joint/m<M>_k<K>/    # jointly trained PQ students (load_pq_student), one per setting
    OUT/onnx/pq_joint.onnx     # the setting chosen on validation NDCG@10, parity-gated export
    OUT/onnx/*.onnx            # fp32 parent, int8 dynamic/static, fp16, item-table int8, pruned+int8
    OUT/onnx/*.quant.json      # quantization config next to each quantized artefact

References: PyTorch variants are gated against the fp32 parent in PyTorch, ONNX variants against
the fp32 parent's ONNX file (same runtime), and the fp32 ONNX file against PyTorch. The PyTorch
dynamic-int8 variant is measured in memory (its size is its serialized state dict; no file is
written, since its packed weights only reload through pickle).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from recdistill.atomic import sha256_file, write_json
from recdistill.compress import gate as G
from recdistill.compress.int8_onnx import has_embedding_tables, has_item_table, int8_onnx
from recdistill.compress.onnx_quant import convert_fp16, quantize_dynamic_onnx, quantize_static_onnx
from recdistill.compress.pq import pq_compress, save_pq_student
from recdistill.compress.prune import count_params, prune_student
from recdistill.compress.quantize import dynamic_int8, state_bytes
from recdistill.compress.recover import recover
from recdistill.errors import ConfigError

_DATA_KEYS = ("eval_split", "calibration_split", "calibration_batches", "max_eval_batches")
STEPS = ("prune", "recover", "torch_int8", "onnx", "pq", "pq_joint")
# the settings each step reads itself; the rest of its mapping goes to the function named in ``_step_function``
_STEP_KEYS = {"prune": ("ratio", "attention", "prune_hidden"), "recover": ("parent_as_teacher",), "torch_int8": (),
              "onnx": ("dynamic_int8", "static_int8", "fp16", "per_channel", "item_table", "pruned_int8"),
              "pq": ("recover_epochs", "recover"), "pq_joint": ("settings", "min_item_table_ratio")}


def _step_function(step: str) -> tuple[Any, set[str]] | None:
    """The function a step passes its other settings to, and the arguments the pipeline gives it itself."""
    if step == "recover":
        return recover, {"student", "parent", "train_batches"}
    if step == "pq":
        return pq_compress, {"model"}
    if step == "pq_joint":
        from recdistill.compress.pq_train import train_joint_pq

        return train_joint_pq, {"dm", "name", "init_args", "num_subspaces", "num_centroids", "parent"}
    return None


def _keyword_names(function: Any) -> set[str]:
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {p.name for p in inspect.signature(function).parameters.values() if p.kind in kinds}


def check_steps(steps: Mapping[str, Any]) -> None:
    """Refuse, with a :class:`~recdistill.errors.ConfigError` naming the key, an unknown step or a setting
    no step reads (a typo would otherwise be ignored, or fail deep in a step with a traceback)."""
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ConfigError(f"unknown compress step(s) {unknown} under steps; known: {list(STEPS)}")
    for step, cfg in steps.items():
        if cfg is None:
            continue
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"steps.{step} must be a mapping of settings (or empty), got {cfg!r:.80}")
        known = set(_STEP_KEYS[step])
        target = _step_function(step)
        if target is not None:
            known |= _keyword_names(target[0]) - target[1]
        takes_any = target is not None and any(p.kind is inspect.Parameter.VAR_KEYWORD
                                               for p in inspect.signature(target[0]).parameters.values())
        bad = [] if takes_any else sorted(set(cfg) - known)
        if bad:
            raise ConfigError(f"steps.{step}: unknown setting(s) {bad}; known: {sorted(known)}")
        schemes = cfg.get("item_table") if step == "onnx" else None
        if schemes is not None and (not isinstance(schemes, (list, tuple))
                                    or any(v not in ("per_tensor", "per_row") for v in schemes)):
            raise ConfigError(f"steps.onnx.item_table must be a list of per_tensor / per_row, got {schemes!r:.80}")
        nested = cfg.get("recover") if step == "pq" else None
        if nested is not None:
            if not isinstance(nested, Mapping):
                raise ConfigError(f"steps.pq.recover must be a mapping of settings, got {nested!r:.80}")
            known = _keyword_names(recover) - {"student", "parent", "train_batches", "epochs"}
            bad = sorted(set(nested) - known)
            if bad:
                raise ConfigError(f"steps.pq.recover: unknown setting(s) {bad}; known: {sorted(known)} "
                                  f"(the epochs are steps.pq.recover_epochs)")


@contextmanager
def _threads(n: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _datamodule(parent: nn.Module, data: Mapping[str, Any]):
    from recdistill.data.datamodules import CTRDataModule, SequentialDataModule

    kwargs = {k: v for k, v in data.items() if k not in _DATA_KEYS}
    if getattr(parent, "objective", None) == "ctr":
        return CTRDataModule(**kwargs)
    dm = SequentialDataModule(**kwargs)
    if dm.num_items != parent.num_items:
        raise ConfigError(f"data.dataset: the data has {dm.num_items} items but the student was built for "
                          f"{parent.num_items}: wrong dataset for this student")
    return dm


class _Run:
    def __init__(self, parent: nn.Module, dm: Any, config: Mapping[str, Any], out: Path) -> None:
        data = config.get("data", {})
        self.parent, self.dm, self.out = parent, dm, out
        self.thresholds = G.GateThresholds.from_dict(config.get("gate"))
        lat = config.get("latency", {})
        self.lat_batch, self.lat_runs, self.threads = int(lat.get("batch_size", 1)), int(lat.get("runs", 30)), \
            int(lat.get("threads", 1))
        batches = list(dm.dataloader(data.get("eval_split", "test")))
        limit = data.get("max_eval_batches")
        self.eval_batches = batches[:limit] if limit else batches
        self.calibration = list(dm.dataloader(data.get("calibration_split", "valid")))[
            : int(data.get("calibration_batches", 4))]
        first = self.eval_batches[0]
        self.lat_batch_dict = {k: v[: self.lat_batch] for k, v in first.items()}
        self.records: list[dict[str, Any]] = []
        self.parent_sha256 = ""  # set by run_compress (what a reused RecJPQ training must match)
        # what a RecJPQ training reads besides its own settings: the data-module settings (batch size,
        # max_len, windows, ...; not the evaluation-only keys) and the data themselves
        self.training_data = {"settings": {k: v for k, v in data.items() if k not in _DATA_KEYS},
                              "fingerprint": getattr(dm, "fingerprint", None)}
        with _threads(self.threads):
            self.parent_eval = G.evaluate(G.torch_scorer(parent), self.eval_batches)
            self.parent_latency = self.torch_latency(parent)
        self.parent_bytes = state_bytes(parent)
        self.parent_params = count_params(parent)
        self.onnx_parent: dict[str, Any] | None = None

    def torch_latency(self, model: nn.Module) -> float:
        scorer = G.torch_scorer(model)
        with _threads(self.threads):
            return G.median_latency_ms(lambda: scorer(self.lat_batch_dict), runs=self.lat_runs)

    def gate_torch(self, name: str, model: nn.Module, size: int | None, extra: dict | None = None) -> dict:
        with _threads(self.threads):
            result = G.evaluate(G.torch_scorer(model), self.eval_batches)
        record = G.gate_variant(name, self.parent_eval, result, self.thresholds, size_bytes=size,
                                parent_size_bytes=self.parent_bytes, params=count_params(model),
                                parent_params=self.parent_params, latency_ms=self.torch_latency(model),
                                parent_latency_ms=self.parent_latency, extra={"runtime": "torch", **(extra or {})})
        self.records.append(record)
        return record

    def onnx_eval(self, path: Path) -> tuple[dict, float]:
        scorer, _ = G.onnx_scorer(path, self.threads)
        result = G.evaluate(scorer, self.eval_batches)
        return result, G.median_latency_ms(lambda: scorer(self.lat_batch_dict), runs=self.lat_runs)

    def export(self, model: nn.Module, path: Path) -> Path:
        from recdistill.export import export_onnx

        export_onnx(model, path)
        return path

    def gate_onnx(self, name: str, path: Path, extra: dict | None = None) -> dict:
        result, latency = self.onnx_eval(path)
        ref = self.onnx_parent
        record = G.gate_variant(name, ref["eval"], result, self.thresholds, size_bytes=path.stat().st_size,
                                parent_size_bytes=ref["bytes"], latency_ms=latency, parent_latency_ms=ref["latency"],
                                extra={"runtime": "onnxruntime", "file": str(path.relative_to(self.out)),
                                       "reference": "fp32 parent ONNX", **(extra or {})})
        self.records.append(record)
        return record

    def ensure_onnx_parent(self) -> dict[str, Any]:
        if self.onnx_parent is None:
            path = self.export(self.parent, self.out / "onnx" / "fp32.onnx")
            result, latency = self.onnx_eval(path)
            self.onnx_parent = {"path": path, "eval": result, "latency": latency, "bytes": path.stat().st_size}
            record = G.gate_variant("onnx_fp32", self.parent_eval, result, self.thresholds,
                                    size_bytes=path.stat().st_size, parent_size_bytes=self.parent_bytes,
                                    latency_ms=latency, parent_latency_ms=self.parent_latency,
                                    extra={"runtime": "onnxruntime", "file": "onnx/fp32.onnx",
                                           "reference": "fp32 parent in PyTorch"})
            self.records.append(record)
        return self.onnx_parent

    def feeds(self, path: Path) -> list[dict]:
        scorer, _ = G.onnx_scorer(path, self.threads)
        return [scorer.feed(b) for b in self.calibration]


def _pq_joint(run: _Run, cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Train one PQ student per ``settings`` entry ``[M, K]`` (RecJPQ joint training), gate each
    against the parent; the setting with the best validation NDCG@10 among those at least
    ``min_item_table_ratio`` x smaller is exported to ONNX (parity-gated) and returned."""
    from recdistill.compress.pq_train import train_joint_pq
    from recdistill.export import export_onnx
    from recdistill.export.parity import ParityError

    settings = [tuple(int(v) for v in s) for s in cfg.pop("settings", [[8, 64]])]
    min_ratio = float(cfg.pop("min_item_table_ratio", 8.0))
    init_args = {k: v for k, v in run.parent.init_args.items() if k != "num_items"}
    candidates = []
    for m, k in settings:
        name = f"pq_joint_m{m}_k{k}"
        folder = out / "pq_joint" / f"m{m}_k{k}"
        key = joint_setting_key(run.parent_sha256, m, k, cfg, data=run.training_data)
        reused = _reuse_joint_setting(folder, key)
        if reused is not None:
            model, info = reused
            print(f"[pq_joint] {name}: reusing the student trained with the same parent and settings ({folder})")
        else:
            parent = run.parent if float(cfg.get("kd_weight", 0.0)) > 0 else None  # distil from it
            model, info = train_joint_pq(run.dm, run.parent.registry_name, init_args, num_subspaces=m,
                                         num_centroids=k, parent=parent, **cfg)
            info["setting_key"] = key
            save_pq_student(model, folder, info)
        record = run.gate_torch(name, model, (out / "pq_joint" / f"m{m}_k{k}" / "model.safetensors").stat().st_size,
                                {"dir": f"pq_joint/m{m}_k{k}", "pq": info, "valid_ndcg10": info["valid_ndcg@10"]})
        candidates.append((record, model))
    eligible = [(r, m) for r, m in candidates if r["pq"]["item_table_ratio"] >= min_ratio] or candidates
    best, model = max(eligible, key=lambda rm: rm[0]["valid_ndcg10"])
    try:
        exported = export_onnx(model, out / "onnx" / "pq_joint.onnx")
        best["onnx"] = {"file": "onnx/pq_joint.onnx", "parity_passed": exported.parity.passed if exported.parity
                        else None}
    except ParityError as exc:  # reported on the record, never a silent success
        best["onnx"] = {"file": None, "parity_passed": False, "error": str(exc)[:300]}
    return {"chosen": best["name"], "selected_on": "valid ndcg@10", "min_item_table_ratio": min_ratio,
            "valid_ndcg10": {r["name"]: r["valid_ndcg10"] for r, _ in candidates}}


def joint_setting_key(parent_sha256: str, num_subspaces: int, num_centroids: int, cfg: Mapping[str, Any],
                      data: Mapping[str, Any] | None = None) -> str:
    """What one RecJPQ training depends on (parent weights, ``[M, K]``, the training settings and the
    data it trains and selects on: ``data`` = the data-module settings + the dataset fingerprint):
    a folder trained under the same key is reused, so adding a setting or resuming a killed run
    trains only what is missing."""
    from recdistill.pipeline import inputs_hash

    return inputs_hash({"parent_sha256": parent_sha256, "num_subspaces": num_subspaces,
                        "num_centroids": num_centroids, "train": dict(cfg), "data": dict(data or {})})


def _reuse_joint_setting(folder: Path, key: str) -> tuple[Any, dict[str, Any]] | None:
    """The PQ student saved in ``folder`` under ``key`` (weights checked), or None."""
    from recdistill.compress.pq import PQ_SPEC, load_pq_student

    spec = folder / PQ_SPEC
    if not spec.is_file():
        return None
    try:
        info = json.loads(spec.read_text()).get("compression") or {}
    except (OSError, ValueError):
        return None
    if info.get("setting_key") != key:
        return None
    return load_pq_student(folder), info


def run_compress(student_dir: str | Path, config: Mapping[str, Any], output_dir: str | Path) -> dict[str, Any]:
    """Run the configured steps on the student in ``student_dir``; writes and returns ``compress.json``."""
    from recdistill.student.io import load_student, save_student

    unknown = sorted(set(config) - {"data", "gate", "latency", "steps"})
    if unknown:
        raise ConfigError(f"unknown compress config key(s) {unknown}; known: ['data', 'gate', 'latency', 'steps']")
    steps = dict(config.get("steps") or {})
    check_steps(steps)  # before any data is loaded or model built
    G.GateThresholds.from_dict(config.get("gate"))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    parent = load_student(student_dir)
    ctr = getattr(parent, "objective", None) == "ctr"
    run = _Run(parent, _datamodule(parent, config.get("data", {})), config, out)
    run.parent_sha256 = sha256_file(Path(student_dir) / "model.safetensors")
    notes: dict[str, str] = {}
    summary: dict[str, Any] = {"student": parent.registry_name, "source": str(student_dir), "config": dict(config),
                               "parent": {"params": run.parent_params, "state_bytes": run.parent_bytes,
                                          "latency_p50_ms": run.parent_latency,
                                          **{k: v for k, v in run.parent_eval.items() if k != "scores"}}}

    pruned = None
    if "prune" in steps:
        cfg = steps["prune"] or {}
        pruned, report = prune_student(parent, float(cfg.get("ratio", 0.5)),
                                       attention=cfg.get("attention", "head_dims"),
                                       prune_hidden=bool(cfg.get("prune_hidden", True)))
        save_student(pruned, out / "pruned")
        run.gate_torch("pruned", pruned, (out / "pruned" / "model.safetensors").stat().st_size,
                       {"dir": "pruned", "prune": report.to_dict()})
    if "recover" in steps:
        cfg = dict(steps["recover"] or {})
        if pruned is None:
            notes["recover"] = "skipped: needs the prune step"
        elif ctr:
            notes["recover"] = "skipped: recovery fine-tuning is implemented for sequential students only"
        else:
            if cfg.get("signals"):  # the LLM teacher's cache, checked against this dataset
                from recdistill.teacher.cache_reader import TeacherSignals

                cfg["signals"] = TeacherSignals(cfg["signals"], split=run.dm.split)
            teacher = parent if cfg.pop("parent_as_teacher", True) else None
            history = recover(pruned, teacher, run.dm.train_dataloader(), **cfg)
            save_student(pruned, out / "pruned_recovered")
            run.gate_torch("pruned_recovered", pruned,
                           (out / "pruned_recovered" / "model.safetensors").stat().st_size,
                           {"dir": "pruned_recovered", "recover": history})
    if "torch_int8" in steps:
        q = dynamic_int8(parent)
        run.gate_torch("torch_dynamic_int8", q, state_bytes(q), {"file": None, "size_is": "serialized state dict"})
    if "onnx" in steps:
        cfg = steps["onnx"] or {}
        run.ensure_onnx_parent()
        src = run.onnx_parent["path"]
        onnx_dir = out / "onnx"
        if cfg.get("dynamic_int8", True):
            c = quantize_dynamic_onnx(src, onnx_dir / "int8_dynamic.onnx",
                                      per_channel=bool(cfg.get("per_channel", False)))
            run.gate_onnx("onnx_int8_dynamic", onnx_dir / "int8_dynamic.onnx", {"quantization": c})
        if cfg.get("static_int8", True):
            c = quantize_static_onnx(src, onnx_dir / "int8_static.onnx", run.feeds(src),
                                     per_channel=bool(cfg.get("per_channel", True)))
            run.gate_onnx("onnx_int8_static", onnx_dir / "int8_static.onnx", {"quantization": c})
        if cfg.get("fp16", True):
            c = convert_fp16(src, onnx_dir / "fp16.onnx")
            run.gate_onnx("onnx_fp16", onnx_dir / "fp16.onnx", {"quantization": c})
        table = list(cfg.get("item_table", [])) if has_embedding_tables(parent) or not ctr else []
        candidates = []
        for scheme in table:
            name = f"onnx_int8_item_table_{scheme}"
            if scheme not in ("per_tensor", "per_row"):
                raise ConfigError(f"steps.onnx.item_table: a scheme must be per_tensor or per_row, got {scheme!r}")
            c = int8_onnx(parent, src, onnx_dir / f"{name}.onnx", item_table=scheme)
            candidates.append(run.gate_onnx(name, onnx_dir / f"{name}.onnx", {"quantization": c}))
        if candidates:  # CTR: the passing one with the best AUC (no top-10 to agree on)
            summary["item_table_choice"] = G.pick_best(candidates, key="auc" if ctr else "top10_overlap")
        if pruned is not None and cfg.get("pruned_int8", True):
            fp32 = run.export(pruned, onnx_dir / "pruned_fp32.onnx")
            scheme = "per_row" if "per_row" in table else "none"  # the item table too, as for the parent
            c = int8_onnx(pruned, fp32, onnx_dir / "pruned_int8.onnx", item_table=scheme)
            run.gate_onnx("onnx_pruned_int8", onnx_dir / "pruned_int8.onnx",
                          {"quantization": c, "from": "pruned_recovered" if "recover" in steps and not ctr
                           else "pruned"})
    if "pq" in steps:
        cfg = dict(steps["pq"] or {})
        if not has_item_table(parent):
            notes["pq"] = f"skipped: {parent.registry_name} has no item table"
        else:
            epochs = int(cfg.pop("recover_epochs", 0))
            recover_cfg = dict(cfg.pop("recover", {}) or {})
            model, info = pq_compress(parent, **cfg)
            if epochs and not ctr:
                info["recover"] = recover(model, parent, run.dm.train_dataloader(), epochs=epochs, **recover_cfg)
            save_pq_student(model, out / "pq", info)
            with _threads(run.threads):  # validation NDCG@10: PQ variants are compared on it
                valid = G.evaluate(G.torch_scorer(model), list(run.dm.dataloader("valid")))["ndcg@10"]
            run.gate_torch("pq_item_table", model, (out / "pq" / "model.safetensors").stat().st_size,
                           {"dir": "pq", "pq": info, "valid_ndcg10": valid})
    if "pq_joint" in steps:
        if ctr or not has_item_table(parent):
            notes["pq_joint"] = f"skipped: {parent.registry_name} has no sequential item table"
        else:
            summary["pq_joint_choice"] = _pq_joint(run, dict(steps["pq_joint"] or {}), out)
    summary["variants"] = run.records
    summary["notes"] = notes
    summary["passed"] = {r["name"]: r["passed"] for r in run.records}
    write_json(out / "compress.json", summary)
    return summary
