"""Command line: ``python -m eqp COMMAND`` (train, bench, equivalence, fetch, trials, runs,
snapshot, config-doc).

The pipeline's scripts call the same library functions directly; this is for people.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from pathlib import Path

from eqp.config.settings import (
    SettingsError,
    load_yaml,
    parse_override,
    select_trial,
    trials_from_config,
)

DEFAULT_CONFIG = "config/paper.yaml"
SCHEMA = "workflow/schemas/config.schema.yaml"
# The fast engine's weight layouts (eqp.engines.fast.LAYOUTS), spelt out so --help needs no torch.
LAYOUTS = ("auto", "dense", "blocked", "fused")


def _add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train one named trial and write its result folder",
        description="Train one named trial of CONFIG and write metrics.csv, layer_rates.npz, "
        "mean_dw.npz, initial.npz, model.safetensors and summary.json to --out.",
    )
    parser.add_argument("config", help="YAML config holding the trial (e.g. config/paper.yaml)")
    parser.add_argument("--trial", required=True, help="trial name, e.g. wine_5layer_swni")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--epochs", type=int, help="override the number of epochs")
    parser.add_argument("--device", help="torch device: cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, help="override the seed")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any trial setting (YAML value), repeatable: --set batch_size=10",
    )
    parser.add_argument("--data-dir", default="resources/datasets", help="MNIST data root")
    parser.add_argument("--engine", choices=("fast", "dense"), default="fast")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="fast engine's weight layout (default auto: fused kernel on CPUs where built)",
    )
    parser.add_argument(
        "--step-kernel",
        choices=("cublas", "triton"),
        default="cublas",
        help="on CUDA: an Euler step as cuBLAS addmm + clamp (default) or one fused Triton kernel",
    )
    parser.add_argument("--checkpoint", help="checkpoint file: saved every epoch, resumed")
    parser.add_argument(
        "--keep-state",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the final state in OUT/state.safetensors, so that a later run with more "
        "--epochs continues it (default: only when it is at most 64 MiB)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the paper's small matrices gain little from more)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _add_bench(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "bench",
        help="time implementations against each other (engines, settle methods, threads)",
        description="Without --settle and with one --threads: seconds per training batch and "
        "per Euler step for each engine on synthetic batches of the trial's shapes (s/batch, "
        "the FLOP floor, GFLOP/s, a plain matmul's GFLOP/s and the dense/fast ratio). With "
        "--settle or several --threads: seconds per training batch and per test chunk of the "
        "fast engine for every settle method and thread count, from one warm state, with the "
        "free-phase work per example and the ratios.",
    )
    parser.add_argument(
        "--trial",
        action="append",
        help="trial name (repeatable); default: mnist_5layer_swni, mnist_3layer_mlff, "
        "wine_8layer_mlff",
    )
    parser.add_argument(
        "--engine",
        action="append",
        choices=("dense", "fast"),
        help="engine (repeatable); default: both",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="fast engine's weight layout (default auto)",
    )
    parser.add_argument("--batches", type=int, default=3, help="timed batches per variant")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config holding the trials")
    parser.add_argument(
        "--threads",
        type=int,
        action="append",
        help="CPU threads (repeatable: each count is timed; default 1)",
    )
    parser.add_argument(
        "--settle",
        action="append",
        choices=("euler", "sor"),
        help="free-phase method (repeatable): time the phases per method",
    )
    parser.add_argument(
        "--update",
        action="append",
        choices=("torch", "auto"),
        help="weight update of the phase timings (repeatable; default both: the torch path "
        "before the compiled one, which gives the same bits where it runs)",
    )
    parser.add_argument(
        "--warm-batches",
        type=int,
        default=100,
        help="training batches of the warm-up epoch before phases are timed (default 100)",
    )
    parser.add_argument(
        "--data-dir",
        default="resources/datasets",
        help="MNIST data root for the phase timings (synthetic batches where absent)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="interleaved rounds of the phase timings; the best of each is shown (default 3)",
    )
    parser.add_argument(
        "--checkpoint",
        help="time the phases from this training checkpoint of the one --trial (as --config "
        "describes it; full data from --data-dir) instead of a warm-up epoch: the state a "
        "long run's later epochs are in",
    )
    parser.add_argument(
        "--device",
        help="torch device (default: the trial's). A CUDA device times the GPU variants instead: "
        "as it stands, CUDA graphs and stacked ensembles, with the whole paper's projected hours",
    )
    parser.add_argument(
        "--chunk",
        type=int,
        default=50,
        help="test batches per free phase in the CUDA timings (default 50, the pipeline's)",
    )
    parser.add_argument("--json", help="also write the CUDA timings and projection to this file")
    parser.add_argument(
        "--paper-config",
        default="config/paper.yaml",
        help="the full-paper config whose trials and sweep the CUDA projection counts",
    )


def _add_equivalence(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "equivalence",
        help="measure converged settling (sor) against the faithful Euler phases",
        description="Runs the studies of eqp.studies.equivalence (small: 8 Diabetes/Wine trials x "
        "seeds; mnist: two 5-layer MNIST trials, one epoch on the full data; states: SOR "
        "fixed points against long Euler runs), prints their tables and writes "
        "OUT/equivalence.json. Takes about half an hour on 2 cores.",
    )
    parser.add_argument(
        "--part",
        action="append",
        choices=("small", "mnist", "states"),
        help="study to run (repeatable; default: all three)",
    )
    parser.add_argument("--out", default="results/equivalence", help="output folder")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="config holding the trials")
    parser.add_argument("--data-dir", default="resources/datasets", help="MNIST data root")
    parser.add_argument("--jobs", type=int, default=2, help="trials trained side by side")
    parser.add_argument("--mnist-epochs", type=int, default=1, help="epochs of the mnist study")
    parser.add_argument(
        "--mnist-seed",
        type=int,
        action="append",
        help="seed of the mnist study (repeatable; default 0)",
    )


def _add_fetch(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "fetch",
        help="obtain MNIST or Fashion-MNIST, md5-verified; replaces corrupt files",
        description="Make DATA_DIR hold the four canonical raw files of DATASET (the routes of "
        "eqp.sources: files already there, --source-dir, torchvision's download, the offline "
        "fallbacks). Files whose md5 does not match are deleted and fetched again.",
    )
    parser.add_argument("dataset", choices=("mnist", "fashion_mnist"))
    parser.add_argument("--data-dir", default="resources/datasets", help="data root")
    parser.add_argument(
        "--source-dir", help="a folder holding the four files (plain or .gz); no download"
    )


def _add_trials(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("trials", help="list the trials of a config")
    parser.add_argument(
        "config",
        nargs="?",
        help=f"a config (default {DEFAULT_CONFIG}; where there is none, as an installed "
        "package has none, the published settings shipped with eqp)",
    )


def _add_runs(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "runs",
        help="print the runs index of a results folder",
        description="One row per finished folder (one holding summary.json) under "
        "RESULTS_DIR, trained by the pipeline or not: name, seed, p, every setting that "
        "differs between rows, settle method, engine layout, threads, epochs, final errors, "
        "log-spread, seconds per epoch and the published values. Errors are fractions "
        "(mean costs for diabetes).",
    )
    parser.add_argument("results_dir", nargs="?", default="results", metavar="RESULTS_DIR")
    parser.add_argument("--tsv", action="store_true", help="print TSV (as results/runs.tsv)")
    parser.add_argument(
        "--logs",
        metavar="DIR",
        help="the pipeline's log folder, read for unfinished jobs (default: logs beside "
        "RESULTS_DIR)",
    )


def _add_snapshot(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "snapshot",
        help="copy a run's folders so far, small, and draw its figures and Table 1",
        description="For every trial and sweep point of CONFIG: the finished folder, else "
        "the epochs its checkpoint holds so far (a trial still running is shown at the "
        "epoch it reached, beside the published run at that epoch). Writes small copies of "
        "the folders to OUT/results, Figures 2-5 (Figure 5 once its trials have finished) "
        "and Table 1 (the trials that have an epoch) to OUT. The pipeline's own outputs "
        "are not touched.",
    )
    parser.add_argument("config", help="the pipeline config the run uses")
    parser.add_argument(
        "--out", default="figures/so-far", help="where to write (default figures/so-far)"
    )
    parser.add_argument(
        "--earlier",
        action="append",
        default=[],
        metavar="SNAPSHOT",
        help="an earlier snapshot's --out folder (repeatable; may be OUT itself): folders it "
        "holds with more epochs than the run has now are taken from it, for a run that "
        "went on on another machine",
    )


def _add_curves(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "curves",
        help="several runs of one trial, epoch by epoch, beside the published run",
        description="A Markdown table of the training and test errors per epoch of the "
        "published run and of each RUN (a finished trial folder, or the checkpoint file of "
        "one still training), with each run's test error minus the published one and, for "
        "two or more runs, minus the first run's: the same seed settled two ways tells the "
        "solver's part, several seeds of one solver the seed's.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="trial folder or checkpoint")
    parser.add_argument(
        "--label",
        action="append",
        default=[],
        help="a name for each RUN, in order (default: its settle method and seed)",
    )
    parser.add_argument(
        "--trial", help="the published run to compare with (default: the runs' own trial)"
    )
    parser.add_argument(
        "--every", type=int, default=1, metavar="N", help="show every N-th epoch and the last"
    )
    parser.add_argument(
        "--ranges",
        metavar="A-B,...",
        help="also the mean differences over these ranges of epochs, e.g. 1-10,11-30,31-100",
    )
    parser.add_argument("--csv", metavar="FILE", help="also write the per-epoch errors as CSV")
    parser.add_argument("--plot", metavar="FILE", help="also draw them: FILE's stem as PDF and PNG")


def _add_config_doc(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "config-doc",
        help="print the pipeline config's parameter tables (Markdown) from its schema",
        description="The parameter tables of config/README.md, generated from the JSON "
        "schema of the pipeline config. With --write FILE, replace the generated section of "
        "FILE instead of printing.",
    )
    parser.add_argument("--schema", default=SCHEMA, help=f"the schema (default {SCHEMA})")
    parser.add_argument("--write", metavar="FILE", help="update the generated section of FILE")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eqp",
        description="Equilibrium propagation on layered networks with layer-skipping "
        "connections (Gammell et al. 2021), faithful and fast.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add, _ in COMMANDS.values():
        add(commands)
    return parser


def _train(args: argparse.Namespace) -> int:
    from eqp.training.run import run_trial

    config = load_yaml(args.config)
    settings = select_trial(trials_from_config(config), args.trial)
    overrides = dict(parse_override(text) for text in args.set)
    for key in ("epochs", "device", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if overrides:
        settings = settings.with_overrides(overrides)
    try:
        run_trial(
            settings,
            args.out,
            args.data_dir,
            engine=args.engine,
            layout=args.layout,
            checkpoint=args.checkpoint,
            progress=not args.no_progress,
            log=lambda line: print(line, file=sys.stderr),
            preset=config.get("preset"),
            threads=args.threads,
            step_kernel=args.step_kernel,
            keep_state=args.keep_state,
        )
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        from eqp.pipeline import disk_full_error

        raise disk_full_error(exc, (args.out, args.checkpoint)) from None
    print(Path(args.out) / "summary.json")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from eqp.studies.bench import DEFAULT_TRIALS, run_benchmark, time_phases

    config = load_yaml(args.config)
    trials = trials_from_config(config)
    chosen = [select_trial(trials, name) for name in (args.trial or DEFAULT_TRIALS)]
    if args.device:
        chosen = [s.with_overrides({"device": args.device}) for s in chosen]
    threads = list(dict.fromkeys(args.threads or [1]))
    for option, value, minimum in (
        ("--batches", args.batches, 1),
        ("--warm-batches", args.warm_batches, 1),
        ("--repeats", args.repeats, 1),
        ("--threads", min(threads), 1),
    ):
        if value < minimum:
            raise SettingsError(f"{option} = {value} is invalid; use {minimum} or more")
    if args.checkpoint and len(chosen) != 1:
        raise SettingsError("--checkpoint belongs to one trial: name it with one --trial")
    if args.device and args.device.startswith("cuda") and not args.settle:
        return _bench_cuda(args, config)
    print(f"fused CPU kernel: {_kernel_description()}")
    if args.settle or len(threads) > 1 or args.checkpoint:
        settles = list(dict.fromkeys(args.settle or ["euler"]))
        for settings in chosen:
            time_phases(
                settings,
                settles,
                threads,
                args.batches,
                args.warm_batches,
                args.data_dir,
                args.repeats,
                updates=list(dict.fromkeys(args.update or ["torch", "auto"])),
                checkpoint=args.checkpoint,
                eval_chunk=int(config.get("eval_chunk", 50)),
            )
        return 0
    run_benchmark(
        chosen, args.engine or ("dense", "fast"), args.batches, threads[0], layout=args.layout
    )
    return 0


def _kernel_description() -> str:
    """The fused kernel's build, as a benchmark's first line says it: numbers depend on it."""
    from eqp.engines.backends import c_kernel

    reason = c_kernel.unavailable_reason()
    if reason:
        return f"not used ({reason})"
    threads = "OpenMP" if c_kernel.multithreaded() else "one thread (built without OpenMP)"
    return f"{c_kernel.instruction_set()} arithmetic, {threads}"


def _bench_cuda(args: argparse.Namespace, config: dict) -> int:
    import torch

    from eqp.outputs import records
    from eqp.pipeline import Plan, estimate_seconds
    from eqp.studies import bench_cuda
    from eqp.training.trainer import resolve_device

    resolve_device(args.device)
    trials = trials_from_config(config)
    names = args.trial or bench_cuda.CUDA_TRIALS
    chosen = [select_trial(trials, n).with_overrides({"device": args.device}) for n in names]
    timings = bench_cuda.run_cuda_benchmark(chosen, args.batches, args.chunk, args.repeats)
    paper = Plan.from_config(load_yaml(args.paper_config))
    sweep = [paper.sweep_settings(p, seed) for seed in paper.seeds for p in paper.sweep_points]
    hours = bench_cuda.project_paper_hours(timings, paper.trials, sweep, estimate_seconds)
    card = torch.cuda.get_device_name(torch.device(args.device))
    for scenario, value in hours.items():
        print(f"whole paper on one {card}: {value:.2f} h  ({scenario})")
    if args.json:
        records.atomic_write_json(
            Path(args.json),
            {"card": card, "timings": bench_cuda.as_records(timings), "paper_hours": hours},
        )
    return 0


def _equivalence(args: argparse.Namespace) -> int:
    from eqp.studies.equivalence import run

    for option, value in (("--jobs", args.jobs), ("--mnist-epochs", args.mnist_epochs)):
        if value < 1:
            raise SettingsError(f"{option} = {value} is invalid; use 1 or more")
    parts = args.part or ["small", "mnist", "states"]
    run(
        parts,
        args.out,
        args.config,
        args.data_dir,
        mnist_epochs=args.mnist_epochs,
        mnist_seeds=args.mnist_seed or [0],
        workers=args.jobs,
    )
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from eqp.data.sources import ensure_dataset, raw_dir

    ensure_dataset(args.dataset, args.data_dir, user_dir=args.source_dir, repair=True)
    print(raw_dir(args.dataset, args.data_dir))
    return 0


def _trials(args: argparse.Namespace) -> int:
    path = Path(args.config or DEFAULT_CONFIG)
    if args.config is None and not path.is_file():
        from eqp.outputs.published import published_trials_config

        config, base = published_trials_config(), Path(".")
    else:
        config, base = load_yaml(path), path.parent.parent
    for name, s in trials_from_config(config, base).items():
        sizes = "-".join(map(str, s.layer_sizes))
        print(f"{name:<22} {s.dataset:<14} {s.network_type:<12} {sizes:<32} epochs={s.epochs}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from eqp.outputs.progress import progress_table
    from eqp.outputs.records import RecordError
    from eqp.outputs.runs import display_text, find_run_folders, runs_table, tsv_text

    unfinished = progress_table(args.results_dir, args.logs)
    try:
        table = runs_table(find_run_folders(args.results_dir), base=args.results_dir)
    except RecordError:
        if unfinished.empty:
            raise
        table = None
    if args.tsv:
        if table is not None:
            print(tsv_text(table), end="")
        if not unfinished.empty:
            print(f"# unfinished\n{tsv_text(unfinished)}", end="")
        return 0
    if table is not None:
        print(display_text(table))
    if not unfinished.empty:
        left = unfinished["hours_left"].sum(min_count=1)
        total = "" if left != left else f"; {left:.1f} job-hours left at their own pace"
        print(f"\nUnfinished ({len(unfinished)}, from checkpoints and logs{total}):")
        print(display_text(unfinished))
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    from eqp.pipeline import Plan
    from eqp.pipeline.snapshot import take_snapshot

    config_path = Path(args.config)
    plan = Plan.from_config(load_yaml(config_path), base_dir=config_path.resolve().parent.parent)
    done = take_snapshot(plan, args.out, args.earlier)
    print(
        f"{len(done['folders'])} folder(s) copied to {Path(args.out) / 'results'}, "
        f"{len(done['partial'])} of them unfinished (shown at the epoch they reached)"
    )
    for figure, what in done["figures"].items():
        print(f"{figure}: {what}")
    print(f"Table 1: {done['table'] or 'no trial of it has finished an epoch yet'}")
    print(f"beside the published runs: {done['comparison'] or 'nothing to compare yet'}")
    return 0


def _curves(args: argparse.Namespace) -> int:
    from eqp.outputs.curves import (
        curves_figure,
        curves_frame,
        curves_markdown,
        open_run,
        parse_ranges,
        run_labels,
    )
    from eqp.outputs.records import atomic_write_text

    if args.label and len(args.label) != len(args.runs):
        raise SettingsError(
            f"{len(args.label)} --label for {len(args.runs)} runs; give one per RUN, or none"
        )
    if args.every < 1:
        raise SettingsError(f"--every {args.every}: give a whole number of epochs, 1 or more")
    ranges = parse_ranges(args.ranges) if args.ranges else []
    records = [open_run(path) for path in args.runs]
    labels = args.label or run_labels(records)
    frame, trial, dataset = curves_frame(list(zip(labels, records, strict=True)), args.trial)
    if args.csv:
        atomic_write_text(args.csv, frame.to_csv())
    if args.plot:
        curves_figure(frame, trial, dataset, args.plot)
    print(curves_markdown(frame, trial, dataset, args.every, ranges), end="")
    return 0


def _config_doc(args: argparse.Namespace) -> int:
    from eqp.pipeline import config_doc, load_schema, with_generated_section

    tables = config_doc(load_schema(args.schema))
    if args.write:
        path = Path(args.write)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise SettingsError(f"{path} does not exist; --write updates an existing file") from exc
        path.write_text(with_generated_section(text, tables, path), encoding="utf-8")
        print(f"updated the parameter tables of {path}")
    else:
        print(tables, end="")
    return 0


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors caused by input a user can fix: printed as one line, without a traceback."""
    from eqp.data.datasets import DataError
    from eqp.data.sources import DatasetError
    from eqp.engines.minimiser import LayoutError
    from eqp.outputs.records import RecordError
    from eqp.pipeline import DiskFullError
    from eqp.training.ensemble import EnsembleError
    from eqp.training.trainer import DeviceError

    return (
        SettingsError,
        DataError,
        DatasetError,
        DeviceError,
        RecordError,
        LayoutError,
        EnsembleError,
        DiskFullError,
    )


# Each command: the function that adds its arguments, and the one that runs it.
COMMANDS = {
    "train": (_add_train, _train),
    "bench": (_add_bench, _bench),
    "equivalence": (_add_equivalence, _equivalence),
    "fetch": (_add_fetch, _fetch),
    "trials": (_add_trials, _trials),
    "runs": (_add_runs, _runs),
    "snapshot": (_add_snapshot, _snapshot),
    "curves": (_add_curves, _curves),
    "config-doc": (_add_config_doc, _config_doc),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    user_errors = _user_errors()
    try:
        return COMMANDS[args.command][1](args)
    except user_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
