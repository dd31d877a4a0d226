"""The report of ``recdistill bench compress``: the targets of the compression issue judged on the
numbers (:func:`check_targets`) and the Markdown tables (:func:`render_markdown`: latency by
artefact, every gated variant, PQ over seeds, teacher vs student, targets)."""

from __future__ import annotations

from typing import Any

from recdistill.benchmarks.compress_pq import best_pq, pq_seeds_target, render_pq_seeds

SEQ_LEN = 50
#: compress.json variant -> label of the profiled ONNX file
ONNX_FILES = {"onnx_fp32": "onnx/fp32.onnx", "onnx_int8_dynamic": "onnx/int8_dynamic.onnx",
              "onnx_int8_item_table_per_row": "onnx/onnx_int8_item_table_per_row.onnx",
              "onnx_int8_item_table_per_tensor": "onnx/onnx_int8_item_table_per_tensor.onnx",
              "onnx_pruned_int8": "onnx/pruned_int8.onnx"}


def _run(profile: dict[str, Any], artefact: str, batch: int, threads: int) -> dict[str, Any] | None:
    for r in profile["runs"]:
        if r["artefact"] == artefact and r["batch_size"] == batch and r["threads"] == threads:
            return r
    return None


def _variant(entry: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((v for v in entry["compress"]["variants"] if v["name"] == name), None)


def best_int8(entry: dict[str, Any]) -> str:
    """The int8 ONNX artefact that covers the item table where there is one (the issue's "int8,
    embedding tables included"): the compress run's item-table choice, else dynamic int8."""
    choice = entry["compress"].get("item_table_choice")
    if isinstance(choice, dict):
        choice = choice.get("chosen")
    return choice if choice else "onnx_int8_dynamic"


#: how the quality tables name the int8 artefact with its embedding tables quantized (scheme chosen per run)
INT8 = "int8, tables included,"


def _metric(compress: dict[str, Any]) -> tuple[str, str]:
    """``(variant key, label)`` of the quality metric of a compress run: NDCG@10 (sequential) or AUC (CTR)."""
    variants = compress.get("variants") or [{}]
    return ("ndcg10", "NDCG@10") if any("ndcg10" in v for v in variants) else ("auc", "AUC")


def quality_measures(compress: dict[str, Any]) -> list[tuple[str, float, str, bool]]:
    """The quality and size targets of one compress run (``compress.json``): ``(label, value, limit,
    met)`` for the int8 artefact covering the item table, the pruned (+ recovered) student and
    pruned + int8; quality is NDCG@10 for a sequential student and AUC for a CTR one."""
    entry = {"compress": compress}
    key, metric = _metric(compress)
    out: list[tuple[str, float, str, bool]] = []

    def ratio(variant: dict[str, Any], parent: dict[str, Any] | None = None) -> float:
        """``variant / its parent`` on the metric (the gate's own ratio when it recorded one), or against
        the parent recorded on another variant ``parent``."""
        if parent is None and f"{key}_ratio" in variant:
            return variant[f"{key}_ratio"]
        return variant[key] / (parent or variant)[f"parent_{key}"]

    int8 = _variant(entry, best_int8(entry))
    if int8:  # the scheme chosen may differ per run: the label names the artefact's role, not the scheme
        out += [(f"{INT8} file / fp32 file", int8["size_ratio"], "<= 0.3", int8["size_ratio"] <= 0.3),
                (f"{INT8} {metric} / fp32", ratio(int8), ">= 0.98", ratio(int8) >= 0.98)]
        if "top10_overlap" in int8:
            out.append((f"{INT8} top-10 overlap", int8["top10_overlap"], ">= 0.9", int8["top10_overlap"] >= 0.9))
    rec = _variant(entry, "pruned_recovered")
    label = "pruned + recovered"
    if rec is None:  # no recovery step (the CTR recipes): the pruned student itself
        rec, label = _variant(entry, "pruned"), "pruned"
    if rec:
        share = rec["params"] / rec["parent_params"]
        out += [(f"{label} parameters / unpruned", share, "<= 0.5", share <= 0.5),
                (f"{label} {metric} / unpruned", ratio(rec), ">= 0.97", ratio(rec) >= 0.97)]
    pint8, fp32 = _variant(entry, "onnx_pruned_int8"), _variant(entry, "onnx_fp32")
    if pint8 and fp32:
        size, quality = pint8["size_bytes"] / fp32["size_bytes"], ratio(pint8, fp32)
        out += [("pruned + int8 file / fp32 file", size, "<= 0.25", size <= 0.25),
                (f"pruned + int8 {metric} / unpruned fp32", quality, ">= 0.97", quality >= 0.97)]
    return out


#: how a student is named in the tables, and the run folder of its plain parent per seed
DISPLAY = {"sasrec": "SASRec", "gru4rec": "GRU4Rec", "caser": "Caser", "bert4rec": "BERT4Rec", "deepfm": "DeepFM",
           "dcnv2": "DCN-v2", "din": "DIN"}


def quality_seeds_targets(seeds: dict[str, dict[str, Any]], student: str = "sasrec") -> list[dict[str, Any]]:
    """Each quality target over seeds (``quality_seeds``: seed -> ``{"measures": [[label, value,
    limit, met], ...]}``), judged on the median, with every seed's value in the label."""
    import statistics

    order = sorted(seeds, key=int)
    labels = list(dict.fromkeys(m[0] for s in order for m in seeds[s]["measures"]))
    targets = []
    for label in labels:
        rows = {s: m for s in order for m in seeds[s]["measures"] if m[0] == label}
        limit = next(iter(rows.values()))[2]
        median = statistics.median(m[1] for m in rows.values())
        bound = float(limit.split()[-1])
        met = median <= bound if limit.startswith("<=") else median >= bound
        values = ", ".join(f"{rows[s][1]:.3f}" for s in rows)
        targets.append({"target": f"{DISPLAY.get(student, student)} {label}, median over seeds {', '.join(rows)} "
                                  f"({values})",
                        "value": median, "limit": limit, "met": met,
                        "seeds_met": sum(bool(m[3]) for m in rows.values()), "seeds": len(rows)})
    return targets


def render_quality_seeds(seeds: dict[str, dict[str, Any]], student: str = "sasrec") -> list[str]:
    """Markdown lines: a student's quality and size measures per seed (each seed against its own parent)."""
    if len(seeds) < 2:
        return []
    order = sorted(seeds, key=int)
    display = DISPLAY.get(student, student)
    parent = "sasrec_windows" if student == "sasrec" else student
    metric = "NDCG@10" if any("NDCG@10" in m[0] for s in order for m in seeds[s]["measures"]) else "AUC"
    lines = ["", f"{display} compression over seeds {', '.join(order)} (each seed: the compress recipe on its own "
             f"plain parent, `{parent}-seed<s>`; quality on the test split; judged on the median):", "",
             "| measure | limit | " + " | ".join(f"seed {s}" for s in order) + " | median | seeds meeting it |",
             "|---|---|" + "---:|" * len(order) + "---:|---:|"]
    for target in quality_seeds_targets(seeds, student):
        label = target["target"].split(", median over seeds")[0].removeprefix(f"{display} ")
        cells = []
        for s in order:
            m = next((m for m in seeds[s]["measures"] if m[0] == label), None)
            cells.append("-" if m is None else f"{m[1]:.3f}")
        lines.append(f"| {label} | {target['limit']} | " + " | ".join(cells) +
                     f" | {target['value']:.3f} | {target['seeds_met']}/{target['seeds']} |")
    key = "parent_ndcg10" if metric == "NDCG@10" else "parent_auc"
    parents = ", ".join(f"seed {s} {seeds[s][key]:.4f}" for s in order if seeds[s].get(key))
    schemes = ", ".join(f"seed {s} `{seeds[s]['int8_variant']}`" for s in order if seeds[s].get("int8_variant"))
    notes = ([f"fp32 parents' test {metric}: {parents}."] if parents else []) + \
        ([f"int8 artefact (the item-table scheme that passed with the best agreement): {schemes}."] if schemes else [])
    return lines + ["", " ".join(notes)] if notes else lines


def check_targets(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The compression issue's targets, each with its numbers and met / missed."""
    targets: list[dict[str, Any]] = []

    def add(what: str, value: float | None, limit: str, met: bool | None) -> None:
        targets.append({"target": what, "value": value, "limit": limit, "met": met})

    sas = payload["students"].get("sasrec")
    if sas and "profile" in sas:
        onnx1 = _run(sas["profile"], "onnx_fp32", 1, 1)
        torch1 = _run(sas["profile"], "pytorch_fp32", 1, 1)
        add("SASRec ONNX fp32 p50, batch 1, 1 thread (ms)", onnx1["latency_ms"]["p50"], "<= 0.2",
            onnx1["latency_ms"]["p50"] <= 0.2)
        add("SASRec ONNX fp32 p99, batch 1, 1 thread (ms)", onnx1["latency_ms"]["p99"], "<= 1.0",
            onnx1["latency_ms"]["p99"] <= 1.0)
        speedup = torch1["latency_ms"]["p50"] / onnx1["latency_ms"]["p50"]
        add("SASRec ONNX Runtime over PyTorch eager, batch 1, 1 thread (x)", speedup, ">= 3", speedup >= 3)
        per_seed_quality = (payload.get("quality_seeds") or {}).get("sasrec") or {}
        if len(per_seed_quality) > 1:
            targets.extend(quality_seeds_targets(per_seed_quality))
        else:
            for label, value, limit, met in quality_measures(sas["compress"]):
                add(f"SASRec {label}", value, limit, met)
        pq = best_pq(sas)
        over_seeds = pq_seeds_target((payload.get("pq_seeds") or {}).get("sasrec") or {})
        if over_seeds and len(over_seeds["per_seed"]) > 1:
            per_seed = "; ".join(f"seed {s}: {n[len('pq_'):]} {r:.3f}" for s, (n, r, _) in
                                 sorted(over_seeds["per_seed"].items()))
            add(f"SASRec PQ item table, validation-chosen per seed: times smaller (least; {per_seed})",
                over_seeds["min_item_table_ratio"], ">= 8",
                None if over_seeds["min_item_table_ratio"] is None else over_seeds["min_item_table_ratio"] >= 8)
            add("SASRec PQ item table, validation-chosen per seed: NDCG@10 / fp32 (median over seeds)",
                over_seeds["median_ndcg10_ratio"], ">= 0.98", over_seeds["median_ndcg10_ratio"] >= 0.98)
        elif pq:
            ratio = (pq.get("pq") or {}).get("item_table_ratio")
            add(f"SASRec PQ item table ({pq['name']}): times smaller", ratio, ">= 8",
                None if ratio is None else ratio >= 8)
            add(f"SASRec PQ item table ({pq['name']}) NDCG@10 / fp32", pq["ndcg10_ratio"], ">= 0.98",
                pq["ndcg10_ratio"] >= 0.98)
    teachers = payload.get("teachers") or {}
    for key, limit in (("hybrid_teacher", None), ("text_prompt_teacher", 1000.0)):
        ratio = (teachers.get(key) or {}).get("ratio_to_sasrec_p50")
        if ratio is not None:
            add(f"{key.replace('_', ' ')} / PyTorch SASRec per-user p50 (x)", ratio,
                f">= {limit:g}" if limit else "reported", ratio >= limit if limit else None)
    return targets


def _ms(run: dict[str, Any] | None, key: str = "p50") -> str:
    return "-" if run is None else f"{run['latency_ms'][key]:.3f}"


def _quality(entry: dict[str, Any], artefact: str) -> str:
    parent = entry["compress"]["parent"]
    if artefact == "pytorch_fp32":
        value = parent.get("ndcg@10", parent.get("auc"))
        return "-" if value is None else f"{value:.4f}"
    v = _variant(entry, artefact)
    if v is None:
        return "-"
    value = v.get("ndcg10", v.get("auc"))
    return f"{value:.4f}"


def _verdict(entry: dict[str, Any], artefact: str) -> str:
    v = _variant(entry, artefact)
    if v is None:
        return ""
    return "pass" if v["passed"] else "FAIL: " + "; ".join(v.get("reasons", []))


def render_markdown(payload: dict[str, Any]) -> str:
    lines = [
        f"Serving cost and compression on MovieLens-100K (seed {payload['seed']}, torch {payload['torch']}, "
        f"{payload['machine']['cpus']} CPU cores, shared machine). Latency: p50 / p99 ms per call, sequence "
        f"{SEQ_LEN}, after warm-up; quality on the test split (NDCG@10 for sequential students, AUC for CTR). "
        "Reproduce: `recdistill bench compress --update-readme README.md`.",
        "",
        "| student | artefact | size KiB | quality | gate | b1 p50 (1 thr) | b1 p99 (1 thr) | b32 p50 (1 thr) "
        "| b256 p50 (1 thr) | b256 p50 (2 thr) |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, entry in payload["students"].items():
        profile = entry.get("profile")
        if not profile:
            continue
        artefacts = ["pytorch_fp32", "onnx_fp32", best_int8(entry), "onnx_pruned_int8"]
        for artefact in dict.fromkeys(artefacts):
            b1 = _run(profile, artefact, 1, 1)
            if b1 is None:
                continue
            lines.append(
                f"| {name} | {artefact} | {b1['bytes'] / 1024:.0f} | {_quality(entry, artefact)} | "
                f"{_verdict(entry, artefact)} | {_ms(b1)} | {_ms(b1, 'p99')} | {_ms(_run(profile, artefact, 32, 1))} | "
                f"{_ms(_run(profile, artefact, 256, 1))} | {_ms(_run(profile, artefact, 256, 2))} |")
    capped = {n: e["parent_max_epochs"] for n, e in payload["students"].items() if e.get("parent_max_epochs")}
    if capped:
        lines += ["", "Parents trained for fewer epochs than their recipe (this machine's budget): " +
                  ", ".join(f"{n} (at most {m} epochs)" for n, m in capped.items()) + "."]
    lines += ["", "Other gated variants (PyTorch runtime unless named):", "",
              "| student | variant | params | size ratio | quality | ratio to parent | top-10 overlap | gate |",
              "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, entry in payload["students"].items():
        for v in entry["compress"]["variants"]:
            if v["name"] in ONNX_FILES and v["name"] != "onnx_fp32":
                continue
            quality = v.get("ndcg10", v.get("auc"))
            ratio = v.get("ndcg10_ratio") if "ndcg10" in v else v.get("auc_delta")
            params = f"{v['params']:,}" if v.get("params") else "-"
            lines.append(
                f"| {name} | {v['name']} | {params} | {_fmt(v.get('size_ratio'))} | {_fmt(quality, 4)} | "
                f"{_fmt(ratio)}{' (AUC delta)' if 'auc' in v else ''} | {_fmt(v.get('top10_overlap'))} | "
                f"{'pass' if v['passed'] else 'FAIL'} |")
        for step, why in (entry["compress"].get("notes") or {}).items():
            lines.append(f"| {name} | {step} | - | - | - | - | - | {why} |")
    teachers = payload.get("teachers")
    if teachers:
        lines += ["", f"Teacher vs student per user (batch 1, sequence {teachers['seq_len']}, 1 thread, one process; "
                  "x SASRec = p50 over SASRec's p50 on the same runtime):",
                  "", "| model | runtime | p50 ms | p99 ms | x SASRec (p50) |", "|---|---|---:|---:|---:|"]
        for key, label, runtime in (
                ("sasrec_pytorch", "SASRec", "PyTorch eager"), ("sasrec_onnx", "SASRec (fp32 ONNX)", "ONNX Runtime"),
                ("hybrid_teacher", "hybrid teacher (2 LLM layers)", "PyTorch eager"),
                ("hybrid_teacher_onnx", "hybrid teacher (2 LLM layers)", "ONNX Runtime"),
                ("text_prompt_teacher", "text-prompt teacher (30 LLM layers)", "PyTorch eager"),
                ("text_prompt_teacher_onnx", "text-prompt teacher (30 LLM layers; optimum export, LoRA merged)",
                 "ONNX Runtime")):
            t = teachers.get(key) or {}
            ratio = t.get("ratio_to_sasrec_onnx_p50" if runtime == "ONNX Runtime" else "ratio_to_sasrec_p50")
            if key in ("sasrec_pytorch", "sasrec_onnx"):
                ratio = 1.0
            if "latency_ms" in t:
                lines.append(f"| {label} | {runtime} | {t['latency_ms']['p50']:.2f} | {t['latency_ms']['p99']:.2f} | "
                             f"{'-' if ratio is None else f'{ratio:,.0f}'} |")
            elif "skipped" in t:
                lines.append(f"| {label} | {runtime} | - | - | not exported: {t['skipped']} |")
        if teachers.get("batched"):
            lines += ["", "Batched, PyTorch eager, 1 thread (users scored together, as when a teacher emits its cache):",
                      "", "| users per batch | SASRec ms / batch | hybrid teacher ms / batch | teacher ms / user "
                      "| x SASRec (p50) |", "|---:|---:|---:|---:|---:|"]
            for row in teachers["batched"]:
                lines.append(f"| {row['batch_size']} | {row['sasrec_p50_ms']:.2f} | {row['hybrid_teacher_p50_ms']:.1f} "
                             f"| {row['hybrid_teacher_p50_ms'] / row['batch_size']:.2f} | {row['ratio_p50']:,.0f} |")
    lines += render_pq_seeds((payload.get("pq_seeds") or {}).get("sasrec") or {})
    quality = payload.get("quality_seeds") or {}
    for student in sorted(quality, key=lambda n: list(DISPLAY).index(n) if n in DISPLAY else len(DISPLAY)):
        lines += render_quality_seeds(quality[student], student)
    lines += ["", "| target | value | limit | met |", "|---|---:|---|---|"]
    for t in payload.get("targets", []):
        met = "n/a" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['target']} | {_fmt(t['value'], 3)} | {t['limit']} | {met} |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"

