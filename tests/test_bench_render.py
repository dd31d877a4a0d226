"""Bookkeeping of the compress and distill-sweep benchmarks on hand-made payloads: targets are judged
on the recorded numbers, deltas and medians are computed from the runs."""

from __future__ import annotations

from recdistill.benchmarks.compress import best_int8, check_targets, render_markdown
from recdistill.benchmarks.distill_sweep import render_markdown as render_sweep


def _run(artefact: str, batch: int, threads: int, p50: float, p99: float) -> dict:
    return {"artefact": artefact, "batch_size": batch, "threads": threads, "bytes": 1024,
            "latency_ms": {"p50": p50, "p99": p99}}


def _payload() -> dict:
    variants = [
        {"name": "onnx_fp32", "passed": True, "size_bytes": 1000, "parent_ndcg10": 0.10, "ndcg10": 0.10,
         "ndcg10_ratio": 1.0, "top10_overlap": 1.0, "size_ratio": 0.9},
        {"name": "onnx_int8_item_table_per_row", "passed": True, "size_ratio": 0.28, "ndcg10": 0.099,
         "ndcg10_ratio": 0.99, "top10_overlap": 0.95},
        {"name": "pruned_recovered", "passed": False, "params": 40, "parent_params": 100, "ndcg10": 0.09,
         "ndcg10_ratio": 0.90, "top10_overlap": 0.5, "reasons": ["NDCG@10 below"]},
        {"name": "onnx_pruned_int8", "passed": False, "size_bytes": 200, "ndcg10": 0.0985, "top10_overlap": 0.6,
         "reasons": ["overlap"]},
    ]
    runs = [_run("pytorch_fp32", 1, 1, 0.9, 2.0), _run("onnx_fp32", 1, 1, 0.15, 0.5),
            _run("onnx_int8_item_table_per_row", 1, 1, 0.3, 0.8)]
    return {"seed": 0, "torch": "x", "machine": {"cpus": 2},
            "students": {"sasrec": {"compress": {"parent": {"ndcg@10": 0.1},
                                                 "item_table_choice": {"chosen": "onnx_int8_item_table_per_row"},
                                                 "variants": variants, "notes": {}},
                                    "profile": {"runs": runs}}},
            "teachers": {"seq_len": 50, "sasrec_pytorch": {"latency_ms": {"p50": 1.0, "p99": 2.0}},
                         "text_prompt_teacher": {"latency_ms": {"p50": 800.0, "p99": 900.0},
                                                 "ratio_to_sasrec_p50": 800.0}}}


def test_compress_targets_are_judged_on_the_numbers() -> None:
    payload = _payload()
    assert best_int8(payload["students"]["sasrec"]) == "onnx_int8_item_table_per_row"
    targets = {t["target"]: t for t in check_targets(payload)}
    assert targets["SASRec ONNX fp32 p50, batch 1, 1 thread (ms)"]["met"] is True      # 0.15 <= 0.2
    speedup = targets["SASRec ONNX Runtime over PyTorch eager, batch 1, 1 thread (x)"]
    assert abs(speedup["value"] - 6.0) < 1e-9 and speedup["met"]                         # 0.9 / 0.15
    assert targets["SASRec int8, tables included, file / fp32 file"]["met"] is True  # 0.28 <= 0.3
    assert targets["SASRec pruned + recovered parameters / unpruned"]["value"] == 0.4
    assert targets["SASRec pruned + recovered NDCG@10 / unpruned"]["met"] is False       # 0.90 < 0.97
    pruned_int8 = targets["SASRec pruned + int8 file / fp32 file"]
    assert pruned_int8["value"] == 0.2 and pruned_int8["met"]                            # 200 / 1000
    assert targets["SASRec pruned + int8 NDCG@10 / unpruned fp32"]["met"] is True        # 0.985
    assert targets["text prompt teacher / PyTorch SASRec per-user p50 (x)"]["met"] is False  # 800 < 1000
    markdown = render_markdown({**payload, "targets": check_targets(payload)})
    assert "| sasrec | onnx_fp32 |" in markdown and "**no**" in markdown


def test_sweep_delta_is_distilled_minus_plain_median_over_the_shared_seeds() -> None:
    def row(kind: str, seed: int, ndcg: float, variant: str | None = None) -> dict:
        return {"student": "gru4rec", "hidden_size": None, "kind": kind, "seed": seed, "num_parameters": 1000,
                "variant": variant, "valid": {"ndcg@10": ndcg}, "test": {"ndcg@10": ndcg, "cold/ndcg@10": 0.0}}

    payload = {"variant": "v", "seeds": [0, 1, 2], "teacher": {"test": {"ndcg@10": 0.1}}, "torch": "x",
               "rows": [row("plain", 0, 0.10), row("plain", 1, 0.12), row("plain", 2, 0.11),
                        row("distilled", 0, 0.13, "v"), row("distilled", 1, 0.11, "v"), row("distilled", 2, 0.12, "v"),
                        row("distilled", 0, 0.15, "w")]}
    lines = [line for line in render_sweep(payload).splitlines() if line.startswith("| gru4rec")]
    cells = [c.strip() for c in lines[0].split("|")]
    assert cells[3] == "v" and cells[4] == "0, 1, 2" and cells[6] == "0.1100" and cells[7] == "0.1200"
    assert cells[8] == "+0.0100 (+0.030, -0.010, +0.010)"
    other = [c.strip() for c in lines[1].split("|")]  # variant w has seed 0 only: paired with plain seed 0
    assert other[3] == "w" and other[4] == "0" and other[6] == "0.1000" and other[8] == "+0.0500"


def test_sweep_keeps_earlier_rows_unless_redone_and_labels_old_rows_with_their_variant(tmp_path) -> None:
    import json

    from recdistill.benchmarks.distill_sweep import _earlier_rows, _merged

    def row(kind: str, seed: int, ndcg: float, student: str = "gru4rec", variant: str | None = None) -> dict:
        return {"student": student, "hidden_size": None, "kind": kind, "seed": seed, "test": {"ndcg@10": ndcg},
                **({"variant": variant} if variant else {})}

    old = [row("plain", 0, 0.10), row("distilled", 0, 0.12), row("plain", 0, 0.09, "caser")]
    (tmp_path / "distill_sweep.json").write_text(json.dumps({"variant": "v", "rows": old}))
    earlier = _earlier_rows(tmp_path)
    assert earlier[1]["variant"] == "v" and earlier[0].get("variant") is None  # legacy distilled row labelled
    merged = _merged(earlier, [row("plain", 1, 0.11, variant=None), row("distilled", 0, 0.13, variant="v"),
                               row("distilled", 0, 0.14, variant="w")])
    assert [(r["student"], r["kind"], r["seed"], r.get("variant"), r["test"]["ndcg@10"]) for r in merged] == [
        ("gru4rec", "plain", 0, None, 0.10), ("caser", "plain", 0, None, 0.09), ("gru4rec", "plain", 1, None, 0.11),
        ("gru4rec", "distilled", 0, "v", 0.13), ("gru4rec", "distilled", 0, "w", 0.14)]


def test_quality_targets_over_seeds_are_judged_on_the_median() -> None:
    import copy

    from recdistill.benchmarks.compress_report import quality_measures

    payload = _payload()
    one = quality_measures(payload["students"]["sasrec"]["compress"])
    assert [m[0] for m in one][:2] == ["int8, tables included, file / fp32 file",
                                       "int8, tables included, NDCG@10 / fp32"]
    recovered = next(m for m in one if m[0] == "pruned + recovered NDCG@10 / unpruned")
    assert recovered[1:] == (0.90, ">= 0.97", False)
    seeds = {}
    for seed, ratio in (("0", 0.90), ("1", 0.99), ("2", 0.975)):  # two seeds pass, median 0.975 meets 0.97
        compress = copy.deepcopy(payload["students"]["sasrec"]["compress"])
        next(v for v in compress["variants"] if v["name"] == "pruned_recovered")["ndcg10_ratio"] = ratio
        seeds[seed] = {"parent_ndcg10": 0.1, "measures": [list(m) for m in quality_measures(compress)]}
    payload["quality_seeds"] = {"sasrec": seeds}
    targets = {t["target"].split(",")[0]: t for t in check_targets(payload)}
    rec = targets["SASRec pruned + recovered NDCG@10 / unpruned"]
    assert rec["value"] == 0.975 and rec["met"] is True and (rec["seeds_met"], rec["seeds"]) == (2, 3)
    assert "(0.900, 0.990, 0.975)" in rec["target"]
    size = targets["SASRec pruned + int8 file / fp32 file"]
    assert size["value"] == 0.2 and size["met"] is True
    table = render_markdown(payload)
    assert "| pruned + recovered NDCG@10 / unpruned | >= 0.97 | 0.900 | 0.990 | 0.975 | 0.975 | 2/3 |" in table


def test_students_bench_reuses_the_runs_of_a_recipe_with_the_same_settings() -> None:
    """``ml100k_sasrec`` and ``ml100k_sasrec_windows`` differ only in comments: the students benchmark's
    SASRec row uses the runs the teacher benchmark trains; a recipe of its own is trained as itself."""
    from recdistill.benchmarks.students import render_markdown, run_recipe, same_settings

    assert same_settings("sasrec", "sasrec_windows") and not same_settings("sasrec", "gru4rec")
    assert run_recipe("sasrec") == "sasrec_windows" and run_recipe("gru4rec") == "gru4rec"
    metrics = {"task": "sequential", "valid": {"ndcg@10": 0.12}, "test": {"hr@10": 0.2, "ndcg@10": 0.11, "mrr@10": 0.08},
               "num_parameters": 10, "seconds_per_epoch": 1.0, "threads": 1, "epochs": 3}
    payload = {"seeds": [0], "protocol": "p", "torch": "t", "most_popular": None, "ctr_baselines": None,
               "runs": [{**metrics, "student": "sasrec", "recipe": "ml100k_sasrec_windows"},
                        {**metrics, "student": "gru4rec", "recipe": "ml100k_gru4rec"}]}
    text = render_markdown(payload)
    assert "The sasrec row's runs are `ml100k_sasrec_windows`'s" in text and "gru4rec row's" not in text


def test_distill_cost_table_judges_the_steady_cpu_ratio() -> None:
    from recdistill.benchmarks.distill_cost import render_markdown

    def result(ratios: dict[str, float], plain: list[float]) -> dict:
        return {"repeats": 3, "threads": 1, "torch": "t", "load_average_1min": {"before": 0.5, "after": 0.7},
                "cpu_seconds": {"plain": plain}, "cpu_ratio_to_plain": {"plain": 1.0, **ratios}}

    first = result({"KL": 2.7, "RD": 1.2}, [3.0, 3.2, 3.4])
    steady = result({"KL": 1.49, "RD": 1.51}, [3.1, 3.6, 3.3])
    table = render_markdown(first, steady)
    assert "| plain SASRec | 1.00 (3.2 s CPU) | 1.00 (3.3 s CPU) | - |" in table
    assert "| KL | 2.70 | 1.49 | yes |" in table and "| RD | 1.20 | 1.51 | **no** |" in table
    assert "varies 3.10–3.60 s CPU" in table


def test_teacher_rows_compare_each_runtime_with_sasrec_on_the_same_runtime() -> None:
    payload = _payload()
    payload["teachers"].update({
        "sasrec_onnx": {"latency_ms": {"p50": 0.2, "p99": 0.4}, "ratio_to_sasrec_p50": 0.2},
        "text_prompt_teacher_onnx": {"latency_ms": {"p50": 700.0, "p99": 750.0}, "ratio_to_sasrec_p50": 700.0,
                                     "ratio_to_sasrec_onnx_p50": 3500.0},
        "hybrid_teacher_onnx": {"skipped": "reads inputs_embeds"}})
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in render_markdown(payload).splitlines()
            if line.startswith("| SASRec") or line.startswith("| text-prompt") or line.startswith("| hybrid")}
    assert rows[("SASRec", "PyTorch eager")].rstrip().endswith("| 1 |")
    assert rows[("SASRec (fp32 ONNX)", "ONNX Runtime")].rstrip().endswith("| 1 |")
    onnx = next(v for k, v in rows.items() if k[0].startswith("text-prompt") and k[1] == "ONNX Runtime")
    assert onnx.rstrip().endswith("| 3,500 |")  # over SASRec on ONNX Runtime, not over PyTorch SASRec
    assert "not exported: reads inputs_embeds" in rows[("hybrid teacher (2 LLM layers)", "ONNX Runtime")]


def test_batched_teacher_rows_give_the_cost_per_user() -> None:
    payload = _payload()
    payload["teachers"]["batched"] = [{"batch_size": 32, "sasrec_p50_ms": 2.0, "hybrid_teacher_p50_ms": 160.0,
                                       "ratio_p50": 80.0}]
    row = next(line for line in render_markdown(payload).splitlines() if line.startswith("| 32 |"))
    assert [c.strip() for c in row.split("|")[1:-1]] == ["32", "2.00", "160.0", "5.00", "80"]  # 160 / 32 users
