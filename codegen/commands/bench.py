"""gradsmith bench: time the generated kernels beside PyTorch, textbook NumPy and a copy probe."""

from __future__ import annotations

import argparse
from pathlib import Path

from gradsmith.codegen.bench import linear, machine
from gradsmith.codegen.bench.report import format_table, require_matplotlib, write_json, write_plot
from gradsmith.codegen.bench.runner import run_benchmark
from gradsmith.codegen.bench.settings import (
    BACKENDS,
    CPU_SHAPES,
    GPU_SHAPES,
    Settings,
    build_cases,
    check_repeat,
    check_softcap,
    check_threads,
    parse_backends,
    parse_dtypes,
    parse_shapes,
)
from gradsmith.codegen.bench.timing import WARMUP_MS
from gradsmith.codegen.errors import UserError
from gradsmith.codegen.row_loss import resolve_loss
from gradsmith.derive.losses import DEFAULT


def _shapes_help() -> str:
    cpu = ",".join(f"{n}x{c}" for n, c in CPU_SHAPES)
    gpu = ",".join(f"{n}x{c}" for n, c in GPU_SHAPES)
    return f"comma-separated NxC (default: {cpu} in float32; on a GPU also {gpu} in float32 and bfloat16)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shapes", default=None, help=_shapes_help())
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help=f"comma-separated subset of {','.join(BACKENDS)}"
    )
    parser.add_argument("--dtypes", default=None, help="comma-separated dtypes for every shape (default: see --shapes)")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per measurement; the median is reported")
    parser.add_argument("--warmup", type=int, default=1, help=f"untimed calls before timing, lasting at least {WARMUP_MS:g} ms unless 0 (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="threads for OpenMP, PyTorch and the copy probe")
    parser.add_argument("--json", type=Path, default=None, help="write the full report as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG of milliseconds per shape for every contender (needs matplotlib)")
    parser.add_argument(
        "--inplace", action="store_true", help="also time the C and CUDA kernels writing dlogits over the logits"
    )
    parser.add_argument(
        "--busy", action="store_true",
        help="keep one core busy with another process throughout (started and stopped here), "
             "and also time the C kernel on one thread",
    )
    parser.add_argument("--softcap", type=float, default=None, metavar="S",
                        help="softcap the logits as S tanh(z/S) before the softmax (Gemma 2), in "
                             "every contender")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random logits and targets")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--loss", default=None, metavar="NAME",
                        help="time another loss (focal, distill_kl) beside torch eager and torch.compile")
    parser.add_argument(
        "--linear", default=None, metavar="NxHxV",
        help="instead: fused linear + cross-entropy at tokens x hidden x vocabulary (e.g. "
             "4096x1024x32000) beside naive torch, F.linear_cross_entropy and torch.compile",
    )


def settings_from(args: argparse.Namespace) -> Settings:
    """Validate every option before anything is measured (errors name the option)."""
    shapes = None if args.shapes is None else parse_shapes(args.shapes)
    dtypes = None if args.dtypes is None else parse_dtypes(args.dtypes)
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    return Settings(
        cases=build_cases(shapes, dtypes, gpu=machine.has_gpu()),
        backends=parse_backends(args.backends),
        repeat=check_repeat(args.repeat),
        warmup=args.warmup,
        threads=check_threads(args.threads),
        seed=args.seed,
        progress=not args.no_progress,
        inplace=args.inplace,
        busy=args.busy,
        softcap=check_softcap(args.softcap),
    )


def run(args: argparse.Namespace) -> int:
    other_loss = args.loss is not None and resolve_loss(args.loss).name != DEFAULT
    if args.softcap is not None and (other_loss or args.linear is not None):
        raise UserError("--softcap applies to cross-entropy, not to --loss or --linear")
    if other_loss:
        return _run_loss(args)
    if args.linear is not None:
        return _run_linear(args)
    try:  # everything here checks the options, before anything is measured
        settings = settings_from(args)
        if args.plot is not None:
            require_matplotlib()
    except ValueError as error:
        raise UserError(str(error)) from error
    for path in (args.json, args.plot):
        if path is not None and not path.parent.is_dir():
            raise UserError(f"cannot write {path}: folder {path.parent} does not exist")
    report = run_benchmark(settings)
    print(format_table(report))
    if args.json is not None:
        write_json(report, args.json)
    if args.plot is not None:
        write_plot(report, args.plot)
    return 0


def _run_loss(args: argparse.Namespace) -> int:
    from gradsmith.codegen.bench import losses

    try:  # the options first, before anything is measured
        shapes = losses.SHAPES if args.shapes is None else parse_shapes(args.shapes)
        (dtype,) = parse_dtypes(args.dtypes) if args.dtypes else ("float32",)
        threads = check_threads(args.threads)
        repeat = check_repeat(args.repeat)
    except ValueError as error:
        raise UserError(str(error)) from error
    if threads is not None:  # else OpenMP's and torch's own defaults, as the main benchmark
        machine.set_threads(threads)
    report = losses.run(args.loss, shapes, dtype, repeat, args.warmup,
                        threads or machine.core_count(), args.seed, busy=args.busy)
    print(losses.format_report(report))
    if args.json is not None:
        write_json(report, args.json)
    return 0


def _run_linear(args: argparse.Namespace) -> int:
    try:  # the options, checked before anything is measured
        shapes = linear.parse_linear(args.linear)
        repeat, threads = check_repeat(args.repeat), check_threads(args.threads)
        if args.warmup < 1:
            raise ValueError(f"--warmup must be >= 1 with --linear (compilation), got {args.warmup}")
    except ValueError as error:
        raise UserError(str(error)) from error
    if args.json is not None and not args.json.parent.is_dir():
        raise UserError(f"cannot write {args.json}: folder {args.json.parent} does not exist")
    report = linear.run_linear(shapes, repeat=repeat, warmup=args.warmup, threads=threads,
                               seed=args.seed)
    print(linear.format_linear(report))
    if args.json is not None:
        write_json(report, args.json)
    return 0
