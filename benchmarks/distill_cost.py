"""``recdistill bench distill-cost``: what a distillation epoch costs next to a plain one.

One process trains the plain student and each distilled variant of ``bench distill`` for one
epoch (no validation), back to back and alternated ``repeats`` times, so that the machine's load
hits every configuration alike, and records wall and CPU seconds of the process (CPU seconds are
what the configuration costs, without other jobs' share). Two runs: the first epoch (including the
one-time load of the cache and the first rebuild of teacher rows) and the steady epoch (epoch 2 of
2, what every later epoch costs). The distillation issue's target: at most 1.5x a plain epoch.

Writes ``distill_epoch_cost.json`` (first epoch), ``distill_epoch_cost_steady.json`` and
``distill_epoch_cost.md``; ``--update-readme`` replaces the table between its README markers.
Measure on an idle machine with one thread (``OMP_NUM_THREADS=1``): the ratios are only as good
as the load is even.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from recdistill.atomic import write_json, write_text
from recdistill.benchmarks.distill import DISTILL_RECIPE, VARIANTS, _override_model
from recdistill.benchmarks.students import update_readme
from recdistill.recipes import recipe_path

EPOCH_COST_VARIANTS = ["DLLM2Rec ranking (top-10)", "DLLM2Rec ranking + embedding",
                       "soft-label KL (full catalogue, tau 2)", "hidden-state (cosine)",
                       "teacher pseudo-interactions (top-3 unseen, w 0.1)"]
DEFAULT_SIGNALS = "benchmarks/results/runs/distill-teacher-seed0/signals"  # bench distill's seed-0 teacher
README_MARKERS = ("<!-- bench:distill-cost:start -->", "<!-- bench:distill-cost:end -->")
TARGET = 1.5


def measure_epoch_cost(signals: str | Path, variants: list[str] | None = None, repeats: int = 3,
                       recipe: str = DISTILL_RECIPE, output: str | Path | None = None,
                       epochs: int = 1) -> dict[str, Any]:
    """Seconds of one training epoch (no validation) of the plain student and of each distilled
    variant (module docstring): medians, ratios to plain and the 1-minute load average before and
    after. ``epochs > 1`` trains that many epochs and times the last one only (what a cache filled
    in the first epoch saves later); ``epochs = 1`` times the whole ``fit`` of one epoch.
    ``output``: also write the result there as JSON."""
    import lightning as L

    from recdistill.data import SequentialDataModule
    from recdistill.distill.module import DistilledSequentialRecommender
    from recdistill.student import build_student
    from recdistill.student.fit import read_recipe
    from recdistill.student.tasks import SequentialRecommender

    config = read_recipe(recipe_path(recipe))
    datamodule = SequentialDataModule(**config["data"])
    student_args = config["model"]["student"]["init_args"]
    names = ["plain", *(variants or EPOCH_COST_VARIANTS)]
    unknown = [n for n in names[1:] if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {sorted(VARIANTS)}")
    load_before = os.getloadavg()[0]

    def one_epoch(name: str) -> tuple[float, float]:
        L.seed_everything(0, verbose=False)
        student = build_student("sasrec", num_items=datamodule.num_items, **student_args)
        if name == "plain":
            module = SequentialRecommender(student)
        else:
            model = _override_model(config["model"], VARIANTS[name])
            module = DistilledSequentialRecommender(student, signals=str(signals), num_items=datamodule.num_items,
                                                    terms=model.get("terms") or [],
                                                    embedding_fusion=model.get("embedding_fusion"),
                                                    item_embedding_init=model.get("item_embedding_init"))

        class Clock(L.Callback):
            def on_train_epoch_start(self, *_: Any) -> None:
                self.started = (time.perf_counter(), time.process_time())

            def on_train_epoch_end(self, *_: Any) -> None:
                self.last = (time.perf_counter() - self.started[0], time.process_time() - self.started[1])

        clock = Clock()
        trainer = L.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=[clock])
        start = (time.perf_counter(), time.process_time())
        trainer.fit(module, datamodule=datamodule)
        whole = (time.perf_counter() - start[0], time.process_time() - start[1])
        return whole if epochs == 1 else clock.last

    seconds: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            wall, used = one_epoch(name)
            seconds[name].append(round(wall, 3))
            cpu[name].append(round(used, 3))
    plain = statistics.median(seconds["plain"])
    result = {"threads": torch.get_num_threads(), "repeats": repeats, "seconds": seconds,
              "median_seconds": {name: statistics.median(v) for name, v in seconds.items()},
              "ratio_to_plain": {name: round(statistics.median(v) / plain, 3) for name, v in seconds.items()},
              # CPU seconds of this process: what the configuration costs, without the other jobs' share
              "cpu_seconds": cpu, "cpu_ratio_to_plain": {
                  name: round(statistics.median(v) / statistics.median(cpu["plain"]), 3) for name, v in cpu.items()},
              "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
              "cpus": os.cpu_count(), "torch": torch.__version__, "epochs": epochs,
              "timed": "whole fit of one epoch" if epochs == 1 else f"epoch {epochs} of {epochs}"}
    if output is not None:
        write_json(output, result)
    return result


def run_epoch_cost_benchmark(output_dir: str | Path = "benchmarks/results", signals: str | Path = DEFAULT_SIGNALS,
                             variants: list[str] | None = None, repeats: int = 3,
                             readme: str | Path | None = None) -> dict[str, Any]:
    """The first and the steady epoch of every variant (module docstring); returns both results."""
    output_dir = Path(output_dir)
    if not (Path(signals) / "manifest.json").is_file():
        raise FileNotFoundError(f"no teacher signal cache at {signals}: run `recdistill bench distill` first "
                                "(its seed-0 teacher emits it) or pass --signals DIR")
    first = measure_epoch_cost(signals, variants, repeats, output=output_dir / "distill_epoch_cost.json")
    steady = measure_epoch_cost(signals, variants, repeats, epochs=2,
                                output=output_dir / "distill_epoch_cost_steady.json")
    markdown = render_markdown(first, steady)
    write_text(output_dir / "distill_epoch_cost.md", markdown)
    if readme is not None:
        update_readme(readme, markdown, markers=README_MARKERS)
    return {"first": first, "steady": steady}


def render_markdown(first: dict[str, Any], steady: dict[str, Any]) -> str:
    """The table: CPU seconds of one epoch as a ratio to plain, first and steady, against the target."""
    plain_first, plain_steady = (statistics.median(r["cpu_seconds"]["plain"]) for r in (first, steady))
    lines = [f"Epoch cost of distillation on MovieLens-100K (`ml100k_sasrec_dllm2rec`'s SASRec, batch 64, every "
             f"window): CPU seconds of the process per training epoch, median of {steady['repeats']} repeats "
             f"alternated in one process, {steady['threads']} thread(s), torch {steady['torch']}; 1-minute load "
             f"average {first['load_average_1min']['before']}–{steady['load_average_1min']['after']}. Target: "
             f"at most {TARGET}x plain. Reproduce: `recdistill bench distill-cost`.",
             "", "| variant | first epoch (x plain) | steady epoch (x plain) | steady within target |",
             "|---|---:|---:|---|"]
    for name in steady["cpu_ratio_to_plain"]:
        if name == "plain":
            lines.append(f"| plain SASRec | 1.00 ({plain_first:.1f} s CPU) | 1.00 ({plain_steady:.1f} s CPU) | - |")
            continue
        a, b = first["cpu_ratio_to_plain"].get(name), steady["cpu_ratio_to_plain"][name]
        lines.append(f"| {name} | {'-' if a is None else f'{a:.2f}'} | {b:.2f} | {'yes' if b <= TARGET else '**no**'} |")
    spread = steady["cpu_seconds"]["plain"]
    lines += ["", f"Plain's own steady epoch varies {min(spread):.2f}–{max(spread):.2f} s CPU between repeats."]
    return "\n".join(lines) + "\n"


__all__ = ["measure_epoch_cost", "run_epoch_cost_benchmark", "render_markdown", "EPOCH_COST_VARIANTS"]
