"""Command line: ``python -m eqp train | bench | trials | runs | config-doc``.

The pipeline's scripts call the same library functions directly; this is for people.
"""

from __future__ import annotations

import argparse
import errno
import sys
from collections.abc import Sequence
from pathlib import Path

from .settings import (
    SettingsError,
    load_yaml,
    parse_override,
    select_trial,
    trials_from_config,
)

DEFAULT_CONFIG = "config/paper.yaml"
SCHEMA = "workflow/schemas/config.schema.yaml"
# The fast engine's weight layouts (eqp.dynamics.LAYOUTS), spelt out so --help needs no torch.
LAYOUTS = ("auto", "dense", "blocked", "fused")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eqp",
        description="Equilibrium propagation on layered networks with layer-skipping "
        "connections (Gammell et al. 2021), faithful and fast.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train one named trial and write its result folder",
        description="Train one named trial of CONFIG and write metrics.csv, layer_rates.npz, "
        "mean_dw.npz, initial.npz, model.safetensors and summary.json to --out.",
    )
    train.add_argument("config", help="YAML config holding the trial (e.g. config/paper.yaml)")
    train.add_argument("--trial", required=True, help="trial name, e.g. wine_5layer_swni")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--epochs", type=int, help="override the number of epochs")
    train.add_argument("--device", help="torch device: cpu, cuda or cuda:N")
    train.add_argument("--seed", type=int, help="override the seed")
    train.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any trial setting (YAML value), repeatable: --set batch_size=10",
    )
    train.add_argument("--data-dir", default="resources/datasets", help="MNIST data root")
    train.add_argument("--engine", choices=("fast", "dense"), default="fast")
    train.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="fast engine's weight layout (default auto: fused kernel on CPUs where built)",
    )
    train.add_argument(
        "--step-kernel",
        choices=("cublas", "triton"),
        default="cublas",
        help="on CUDA: an Euler step as cuBLAS addmm + clamp (default) or one fused Triton kernel",
    )
    train.add_argument("--checkpoint", help="checkpoint file: saved every epoch, resumed")
    train.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: the paper's small matrices gain little from more)",
    )
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    bench = commands.add_parser(
        "bench",
        help="time implementations against each other (engines, settle methods, threads)",
        description="Without --settle and with one --threads: seconds per training batch and "
        "per Euler step for each engine on synthetic batches of the trial's shapes (s/batch, "
        "the FLOP floor, GFLOP/s, a plain matmul's GFLOP/s and the dense/fast ratio). With "
        "--settle or several --threads: seconds per training batch and per test chunk of the "
        "fast engine for every settle method and thread count, from one warm state, with the "
        "free-phase work per example and the ratios.",
    )
    bench.add_argument(
        "--trial",
        action="append",
        help="trial name (repeatable); default: mnist_5layer_swni, mnist_3layer_mlff, "
        "wine_8layer_mlff",
    )
    bench.add_argument(
        "--engine",
        action="append",
        choices=("dense", "fast"),
        help="engine (repeatable); default: both",
    )
    bench.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="fast engine's weight layout (default auto)",
    )
    bench.add_argument("--batches", type=int, default=3, help="timed batches per variant")
    bench.add_argument("--config", default=DEFAULT_CONFIG, help="config holding the trials")
    bench.add_argument(
        "--threads",
        type=int,
        action="append",
        help="CPU threads (repeatable: each count is timed; default 1)",
    )
    bench.add_argument(
        "--settle",
        action="append",
        choices=("euler", "sor"),
        help="free-phase method (repeatable): time the phases per method",
    )
    bench.add_argument(
        "--update",
        action="append",
        choices=("torch", "auto"),
        help="weight update of the phase timings (repeatable; default both: the torch path "
        "before the compiled one, which gives the same bits where it runs)",
    )
    bench.add_argument(
        "--warm-batches",
        type=int,
        default=100,
        help="training batches of the warm-up epoch before phases are timed (default 100)",
    )
    bench.add_argument(
        "--data-dir",
        default="resources/datasets",
        help="MNIST data root for the phase timings (synthetic batches where absent)",
    )
    bench.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="interleaved rounds of the phase timings; the best of each is shown (default 3)",
    )
    bench.add_argument(
        "--device",
        help="torch device (default: the trial's). A CUDA device times the GPU variants instead: "
        "as it stands, CUDA graphs and stacked ensembles, with the whole paper's projected hours",
    )
    bench.add_argument(
        "--chunk",
        type=int,
        default=50,
        help="test batches per free phase in the CUDA timings (default 50, the pipeline's)",
    )
    bench.add_argument("--json", help="also write the CUDA timings and projection to this file")
    bench.add_argument(
        "--paper-config",
        default="config/paper.yaml",
        help="the full-paper config whose trials and sweep the CUDA projection counts",
    )

    study = commands.add_parser(
        "equivalence",
        help="measure converged settling (sor) against the faithful Euler phases",
        description="Runs the studies of eqp.equivalence (small: 8 Diabetes/Wine trials x "
        "seeds; mnist: two 5-layer MNIST trials, one epoch on the full data; states: SOR "
        "fixed points against long Euler runs), prints their tables and writes "
        "OUT/equivalence.json. Takes about half an hour on 2 cores.",
    )
    study.add_argument(
        "--part",
        action="append",
        choices=("small", "mnist", "states"),
        help="study to run (repeatable; default: all three)",
    )
    study.add_argument("--out", default="results/equivalence", help="output folder")
    study.add_argument("--config", default=DEFAULT_CONFIG, help="config holding the trials")
    study.add_argument("--data-dir", default="resources/datasets", help="MNIST data root")
    study.add_argument("--jobs", type=int, default=2, help="trials trained side by side")
    study.add_argument("--mnist-epochs", type=int, default=1, help="epochs of the mnist study")
    study.add_argument(
        "--mnist-seed",
        type=int,
        action="append",
        help="seed of the mnist study (repeatable; default 0)",
    )

    trials = commands.add_parser("trials", help="list the trials of a config")
    trials.add_argument("config", nargs="?", default=DEFAULT_CONFIG)

    runs = commands.add_parser(
        "runs",
        help="print the runs index of a results folder",
        description="One row per finished folder (one holding summary.json) under "
        "RESULTS_DIR, trained by the pipeline or not: name, seed, p, every setting that "
        "differs between rows, settle method, engine layout, threads, epochs, final errors, "
        "log-spread, seconds per epoch and the published values. Errors are fractions "
        "(mean costs for diabetes).",
    )
    runs.add_argument("results_dir", nargs="?", default="results", metavar="RESULTS_DIR")
    runs.add_argument("--tsv", action="store_true", help="print TSV (as results/runs.tsv)")

    doc = commands.add_parser(
        "config-doc",
        help="print the pipeline config's parameter tables (Markdown) from its schema",
        description="The parameter tables of config/README.md, generated from the JSON "
        "schema of the pipeline config. With --write FILE, replace the generated section of "
        "FILE instead of printing.",
    )
    doc.add_argument("--schema", default=SCHEMA, help=f"the schema (default {SCHEMA})")
    doc.add_argument("--write", metavar="FILE", help="update the generated section of FILE")
    return parser


def _train(args: argparse.Namespace) -> int:
    from .trainer import run_trial

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
        )
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        from .pipeline import disk_full_error

        raise disk_full_error(exc, (args.out, args.checkpoint)) from None
    print(Path(args.out) / "summary.json")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from .bench import DEFAULT_TRIALS, run_benchmark, time_phases

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
    if args.device and args.device.startswith("cuda") and not args.settle:
        return _bench_cuda(args, config)
    print(f"fused CPU kernel: {_kernel_description()}")
    if args.settle or len(threads) > 1:
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
            )
        return 0
    run_benchmark(
        chosen, args.engine or ("dense", "fast"), args.batches, threads[0], layout=args.layout
    )
    return 0


def _kernel_description() -> str:
    """The fused kernel's build, as a benchmark's first line says it: numbers depend on it."""
    from . import native

    reason = native.unavailable_reason()
    if reason:
        return f"not used ({reason})"
    threads = "OpenMP" if native.multithreaded() else "one thread (built without OpenMP)"
    return f"{native.instruction_set()} arithmetic, {threads}"


def _bench_cuda(args: argparse.Namespace, config: dict) -> int:
    import torch

    from . import bench_cuda, records
    from .pipeline import Plan, estimate_seconds
    from .trainer import resolve_device

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
    from .equivalence import run

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


def _trials(args: argparse.Namespace) -> int:
    for name, s in trials_from_config(
        load_yaml(args.config), Path(args.config).parent.parent
    ).items():
        sizes = "-".join(map(str, s.layer_sizes))
        print(f"{name:<22} {s.dataset:<14} {s.network_type:<12} {sizes:<32} epochs={s.epochs}")
    return 0


def _runs(args: argparse.Namespace) -> int:
    from .runs import display_text, find_run_folders, runs_table, tsv_text

    table = runs_table(find_run_folders(args.results_dir), base=args.results_dir)
    print(tsv_text(table) if args.tsv else display_text(table), end="" if args.tsv else "\n")
    return 0


def _config_doc(args: argparse.Namespace) -> int:
    from .pipeline import config_doc, load_schema, with_generated_section

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
    from .data import DataError
    from .dynamics import LayoutError
    from .ensemble import EnsembleError
    from .pipeline import DiskFullError
    from .records import RecordError
    from .sources import DatasetError
    from .trainer import DeviceError

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


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {
        "train": _train,
        "bench": _bench,
        "equivalence": _equivalence,
        "trials": _trials,
        "runs": _runs,
        "config-doc": _config_doc,
    }
    user_errors = _user_errors()
    try:
        return handlers[args.command](args)
    except user_errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
