"""The ``recdistill`` command line.

    recdistill fetch movielens-100k|smollm2-135m|all
    recdistill data info movielens-100k [--json]
    recdistill student fit --config recipes/ml100k_sasrec.yaml --output-dir DIR [--trainer.max_epochs 3 ...]
    recdistill teacher fit|emit|eval --config recipes/quickstart_teacher.yaml --output-dir DIR
    recdistill distill fit --config recipes/ml100k_sasrec_dllm2rec.yaml --output-dir DIR
    recdistill compress --student DIR --config recipes/compress_sasrec.yaml --output-dir OUT
    recdistill export --student DIR --output OUT.onnx [--serving] [--k 10]
    recdistill profile --onnx FILE | --student DIR [--batch-sizes 1 256] [--threads 1 2]
    recdistill bench students [--output-dir benchmarks/results] [--students sasrec gru4rec]
    recdistill bench teacher [--seeds 0 1 2] [--no-ablations] [--ablation-seeds 0 1 2] [--variants NAME]
                             [--dataset planted] [--update-readme README.md]
    recdistill bench distill [--seeds 0 1 2] [--variants ...] [--update-readme README.md]
    recdistill bench faults [--kills 10] [--seed 0] [--update-readme README.md]
    recdistill bench distill-cost [--signals DIR] [--variants NAME ...] [--update-readme README.md]
    recdistill bench distill-sweep [--seeds 0] [--variants NAME] [--students gru4rec] [--hidden-sizes 64] [--update-readme README.md]
    recdistill bench compress [--students sasrec deepfm] [--seeds 0] [--no-teachers] [--pq-only | --quality-only] [--update-readme README.md]
    recdistill bench kar [--seeds 0 1 2] [--students deepfm din dcnv2] [--variants kar distill] [--signals DIR] [--update-readme README.md]
    recdistill run RECIPE --output-dir DIR
    recdistill compare RUN_DIR [RUN_DIR ...] [--output-dir OUT]
    recdistill quickstart [--output-dir runs/quickstart]

Recipe overrides after the known options are passed to LightningCLI (``--section.key value``).

Expected failures (missing or unreadable data, a bad column map, an unknown recipe key or a wrong
type, a cache built with other settings, a missing asset or config file, a checkpoint from another
dataset) print one line ``recdistill: error: ...`` on stderr and exit with status 2; ``--debug``
(or ``RECDISTILL_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, NoReturn, Sequence

from recdistill.errors import ConfigError, debug_enabled, user_message


def _fetch(args: argparse.Namespace, rest: list[str]) -> int:
    from recdistill.assets import ASSETS, fetch

    names = sorted(ASSETS) if args.name == "all" else [args.name]
    for name in names:
        paths = fetch(name)
        for filename, path in paths.items():
            print(f"{name}: {path} (sha256 verified)")
    return 0


def _data_info(args: argparse.Namespace, rest: list[str]) -> int:
    from recdistill.data import data_info

    column_map = None
    if args.column_map:
        try:
            column_map = json.loads(args.column_map)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--column-map is not valid JSON ({exc.msg} at character {exc.pos}); "
                              f"""write it like '{{"user": "uid", "item": "iid", "timestamp": "ts"}}'""") from None
        if not isinstance(column_map, dict) or not all(isinstance(v, str) for v in column_map.values()):
            raise ConfigError('--column-map must be a JSON object of column names, e.g. '
                              '\'{"user": "uid", "item": "iid", "timestamp": "ts"}\'')
    info = data_info(args.source, format=args.format, column_map=column_map)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
    else:
        for key, value in info.items():
            print(f"{key}: {value}")
    return 0


def _student_fit(args: argparse.Namespace, rest: list[str]) -> int:
    from recdistill.student.fit import fit_student
    from recdistill.training import say

    metrics = fit_student(args.config, args.output_dir, rest, resume=args.resume)
    test = metrics["test"]
    shown = {k: round(v, 4) for k, v in test.items() if k.endswith("@10") or k in ("auc", "logloss", "gauc")}
    say(f"test ({metrics['student']}, best epoch {metrics['best_epoch']}): {shown}")
    say(f"wrote {args.output_dir}/metrics.json")
    return 0


def _distill_fit(args: argparse.Namespace, rest: list[str]) -> int:
    from recdistill.distill.fit import fit_distilled
    from recdistill.training import say

    metrics = fit_distilled(args.config, args.output_dir, rest, resume=args.resume)
    test = metrics["test"]
    shown = {k: round(v, 4) for k, v in test.items()
             if k in ("ndcg@10", "hr@10", "cold/ndcg@10", "rare/ndcg@10", "auc", "gauc", "logloss")}
    terms = ", ".join(f"{t['name']}×{t.get('weight', 1.0)}" for t in metrics["distill"]["terms"]) or "no terms"
    say(f"test ({metrics['student']} distilled with {terms}; best epoch {metrics['best_epoch']}): {shown}")
    say(f"wrote {args.output_dir}/metrics.json")
    return 0


def _teacher(args: argparse.Namespace, rest: list[str]) -> int:
    from recdistill.teacher.cli import run_teacher_command

    return run_teacher_command(args.action, args.config, args.output_dir, rest, resume=args.resume,
                               trust_remote_code=args.trust_remote_code)


def _bench(args: argparse.Namespace, rest: list[str]) -> int:
    if args.suite == "faults":
        from recdistill.benchmarks.faults import run_fault_benchmark

        if rest:
            raise ConfigError(f"bench faults takes no recipe overrides: {' '.join(rest)}")
        payload = run_fault_benchmark(args.output_dir, kills_per_command=args.kills, seed=args.seed,
                                      flips_per_kind=args.flips, readme=args.update_readme)
        totals = payload["totals"]
        print(f"kills survived {totals['kills_survived']}/{totals['kills']}, corruptions detected "
              f"{totals['corruptions_detected']}/{totals['corruptions']}, bad inputs rejected "
              f"{totals['bad_inputs_rejected']}/{totals['bad_inputs']}; wrote {args.output_dir}/faults.json")
        return 0
    if args.suite == "compress":
        from recdistill.benchmarks.compress import run_compress_benchmark

        run_compress_benchmark(args.output_dir, students=args.students, seed=(args.seeds or [0])[0],
                               teachers=not args.no_teachers, readme=args.update_readme,
                               parent_max_epochs=args.parent_max_epochs, pq_only=args.pq_only,
                               pq_seeds=args.seeds if args.pq_only else None,
                               quality_seeds=args.seeds if args.quality_only else None)
        return 0
    if args.suite == "distill-cost":
        from recdistill.benchmarks.distill_cost import DEFAULT_SIGNALS, run_epoch_cost_benchmark

        run_epoch_cost_benchmark(args.output_dir, signals=args.signals or DEFAULT_SIGNALS, variants=args.variants,
                                 readme=args.update_readme)
        return 0
    if args.suite == "distill-sweep":
        from recdistill.benchmarks.distill_sweep import OTHER_STUDENTS, run_distill_sweep

        sizes = {} if args.hidden_sizes is None else {"hidden_sizes": tuple(args.hidden_sizes)}
        run_distill_sweep(args.output_dir, seeds=args.seeds, variant=(args.variants or [None])[0], **sizes,
                          students=tuple(args.students) if args.students is not None else OTHER_STUDENTS,
                          readme=args.update_readme)
        return 0
    if args.suite == "distill":
        from recdistill.benchmarks.distill import run_distill_benchmark, screen_variant

        if args.add:
            if not args.variants or rest:
                raise ConfigError("bench distill --add needs --variants NAME ... (and takes no overrides)")
            for name in args.variants:
                for seed in args.seeds:
                    screen_variant(name, seed, args.output_dir, readme=args.update_readme)
            return 0
        run_distill_benchmark(args.output_dir, seeds=args.seeds, variants=args.variants, control=not args.no_control,
                              overrides=rest, readme=args.update_readme)
        return 0
    if args.suite == "kar":
        from recdistill.benchmarks.kar import DEFAULT_SIGNALS, run_kar_benchmark

        run_kar_benchmark(args.output_dir, seeds=args.seeds, models=args.students, overrides=rest,
                          signals=args.signals or DEFAULT_SIGNALS, readme=args.update_readme, variants=args.variants)
        return 0
    if args.suite == "teacher":
        from recdistill.benchmarks.teacher import run_teacher_benchmark

        run_teacher_benchmark(args.output_dir, seeds=args.seeds, ablations=not args.no_ablations, overrides=rest,
                              readme=args.update_readme, dataset=args.dataset, ablation_seeds=args.ablation_seeds,
                              ablation_names=args.variants)
        return 0
    from recdistill.benchmarks.students import run_student_benchmark

    run_student_benchmark(args.output_dir, students=args.students, seeds=args.seeds, overrides=rest,
                          readme=args.update_readme)
    return 0


def _run(args: argparse.Namespace, rest: list[str]) -> int:
    from recdistill.run import run_recipe

    run_recipe(args.recipe, args.output_dir)
    return 0


def _compare(args: argparse.Namespace, rest: list[str]) -> int:
    from pathlib import Path

    from recdistill.report import compare_runs

    missing = [d for d in args.run_dirs if not (Path(d) / "run.json").is_file()]
    if missing:
        raise ConfigError(f"not a run folder (no run.json): {', '.join(missing)}; make one with `recdistill run`")
    output = args.output_dir or (str(Path(args.run_dirs[0]) / "report") if len(args.run_dirs) == 1 else "compare")
    path = compare_runs(args.run_dirs, output)
    print(f"wrote {path} (+ report.json and plots)")
    return 0


def _quickstart(args: argparse.Namespace, rest: list[str]) -> int:
    from recdistill.quickstart import run_quickstart

    run_quickstart(args.output_dir, overrides=rest)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one-line :class:`~recdistill.errors.ConfigError` s (printed by :func:`main`)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="recdistill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of a failure (also: RECDISTILL_DEBUG=1)")
    commands = parser.add_subparsers(dest="command", required=True)

    fetch = commands.add_parser("fetch", help="fetch and verify an offline asset into the cache")
    fetch.add_argument("name", help="movielens-100k, smollm2-135m or all")
    fetch.set_defaults(handler=_fetch)

    data = commands.add_parser("data", help="dataset tools").add_subparsers(dest="action", required=True)
    info = data.add_parser("info", help="counts and split sizes of a dataset")
    info.add_argument("source", nargs="?", default="movielens-100k")
    info.add_argument("--format", default=None, help="movielens-raw, ml-1m, recbole, parquet, csv (auto if omitted)")
    info.add_argument("--column-map", default=None, help='JSON, e.g. {"user": "uid", "item": "iid", "timestamp": "ts"}')
    info.add_argument("--json", action="store_true")
    info.set_defaults(handler=_data_info)

    student = commands.add_parser("student", help="train students").add_subparsers(dest="action", required=True)
    fit = student.add_parser("fit", help="train a student from a recipe; writes metrics.json")
    fit.add_argument("--config", required=True, help="recipe file or packaged recipe name")
    fit.add_argument("--output-dir", required=True)
    fit.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last.ckpt")
    fit.set_defaults(handler=_student_fit)

    distill = commands.add_parser("distill", help="train students from the teacher's cached signals")
    distill_fit = distill.add_subparsers(dest="action", required=True).add_parser(
        "fit", help="train a student with distillation terms from a recipe; writes metrics.json")
    distill_fit.add_argument("--config", required=True, help="recipe file or packaged recipe name")
    distill_fit.add_argument("--output-dir", required=True)
    distill_fit.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last.ckpt")
    distill_fit.set_defaults(handler=_distill_fit)

    teacher = commands.add_parser("teacher", help="fine-tune, emit and evaluate the LLM teacher")
    teacher.add_argument("action", choices=["fit", "emit", "eval"])
    teacher.add_argument("--config", required=True)
    teacher.add_argument("--output-dir", required=True)
    teacher.add_argument("--resume", action="store_true",
                         help="fit: continue from OUTPUT_DIR/checkpoints/last.ckpt (trained weights only)")
    teacher.add_argument("--trust-remote-code", action="store_true",
                         help="emit/eval: allow the base model's hub code to run when the teacher is loaded "
                              "(never taken from the checkpoint; fit takes model.trust_remote_code from the recipe)")
    teacher.set_defaults(handler=_teacher)

    bench = commands.add_parser("bench", help="benchmarks that write JSON + Markdown")
    bench.add_argument("suite", choices=["students", "teacher", "distill", "distill-cost", "distill-sweep", "compress", "faults",
                                         "kar"])
    bench.add_argument("--output-dir", default="benchmarks/results")
    bench.add_argument("--students", nargs="*", default=None)
    bench.add_argument("--seeds", nargs="*", type=int, default=[0])
    bench.add_argument("--no-ablations", action="store_true", help="teacher: skip the seed-0 ablations")
    bench.add_argument("--dataset", choices=["ml100k", "planted"], default="ml100k", help="teacher: the data set")
    bench.add_argument("--ablation-seeds", nargs="*", type=int, default=None,
                       help="teacher: the seeds of the ablations (default: the first of --seeds; --variants NAME "
                            "picks ablations by name)")
    bench.add_argument("--variants", nargs="*", default=None,
                       help="distill: the variants to run (default: all); teacher: the ablations to run; kar: kar "
                            "and/or distill (default: both)")
    bench.add_argument("--add", action="store_true",
                       help="distill: train (or reuse) the --variants on the --seeds and merge them into the existing "
                            "distill.json, keeping every other run (a name ending in ', control teacher (random-init "
                            "LLM layers)' uses the recorded control teacher)")
    bench.add_argument("--no-control", action="store_true",
                       help="distill: skip the control teacher (random-init LLM layers)")
    bench.add_argument("--hidden-sizes", nargs="*", type=int, default=None,
                       help="distill-sweep: SASRec hidden sizes (default 16 32 64; none: other students only)")
    bench.add_argument("--no-teachers", action="store_true",
                       help="compress: skip the teacher-to-student latency rows")
    bench.add_argument("--parent-max-epochs", type=int, default=None,
                       help="compress: cap the training of parents not trained yet (recorded per student)")
    bench.add_argument("--signals", default=None, help="kar: the ml100k_teacher_ctr signal cache folder; distill-cost: the "
                       "teacher cache (default: bench distill's seed-0 teacher)")
    bench.add_argument("--pq-only", action="store_true",
                       help="compress: re-run only the PQ stage (post-hoc PQ + RecJPQ joint training) of --students, "
                            "on the plain parent of every --seeds (the first seed's row is the table's)")
    bench.add_argument("--quality-only", action="store_true",
                       help="compress: run only the compress stage of --students on the plain parent of every "
                            "--seeds (no timings); quality targets judged on the median over seeds")
    bench.add_argument("--kills", type=int, default=10, help="faults: SIGKILLs per command (at least)")
    bench.add_argument("--seed", type=int, default=0, help="faults: seed of the kill times and flipped bytes")
    bench.add_argument("--flips", type=int, default=3, help="faults: byte flips per corrupted file kind")
    bench.add_argument("--update-readme", metavar="README", default=None,
                       help="also replace the results table between the bench markers of this README")
    bench.set_defaults(handler=_bench)

    from recdistill.compress.cli import add_compress_commands
    from recdistill.export.cli import add_export_commands

    add_compress_commands(commands)
    add_export_commands(commands)

    run = commands.add_parser("run", help="a run recipe end to end (data, teacher, students, compress, export, "
                                          "profile, report) into one run folder; finished stages are skipped")
    run.add_argument("recipe", help="run recipe file or packaged name, e.g. recipes/quickstart.yaml")
    run.add_argument("--output-dir", required=True)
    run.set_defaults(handler=_run)

    compare = commands.add_parser("compare", help="report.md + report.json + plots from one or more run folders")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    compare.add_argument("--output-dir", default=None, help="default: RUN_DIR/report (one run), ./compare (several)")
    compare.set_defaults(handler=_compare)

    quick = commands.add_parser("quickstart", help="the quickstart recipe end to end on MovieLens-100K + SmolLM2")
    quick.add_argument("--output-dir", default="runs/quickstart")
    quick.set_defaults(handler=_quickstart)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit status (2 and one line on stderr for an expected failure)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_enabled() or "--debug" in argv
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
    try:
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        handler: Callable[[argparse.Namespace, list[str]], int] = args.handler
        takes_overrides = args.command in ("student", "teacher", "distill", "bench", "quickstart")
        if rest and not takes_overrides:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        if args.command in ("student", "teacher", "distill", "bench", "run", "quickstart", "compress", "export"):
            from recdistill.training import quiet_known_noise

            quiet_known_noise()  # library tips and known-harmless warnings stay off the console
        return handler(args, rest)
    except Exception as exc:  # noqa: BLE001 - classified below; anything unexpected is re-raised
        message = user_message(exc)
        if message is None or debug:
            raise
        print(f"recdistill: error: {message}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except SystemExit as exc:  # a library's own usage error (argparse/jsonargparse): already printed
        if debug or exc.code in (0, None):
            raise
        return exc.code if isinstance(exc.code, int) else 2
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Tear down the process group a multi-process (Lightning DDP) command leaves open: with gloo's
    threads still running at interpreter exit a rank can abort ("terminate called without an active
    exception") after its work is done."""
    dist = sys.modules.get("torch.distributed")  # never imports torch for a command that did not
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
