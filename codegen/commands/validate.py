"""gradsmith validate: compile or import every kernel of a tree and check it against the mpmath
reference and finite differences; exit 1 if anything fails."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from gradsmith.codegen.errors import UserError
from gradsmith.codegen.loading import kernel_tree
from gradsmith.codegen.registry import backend, backends_option, names
from gradsmith.codegen.row_loss import resolve_loss
from gradsmith.codegen.validate.cases import grid
from gradsmith.codegen.validate.check import Row, validate_backend
from gradsmith.derive.losses import DEFAULT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kernels", type=Path, default=None,
                        help="kernel tree written by 'gradsmith generate --out DIR' "
                        "(default: the shipped one)")
    parser.add_argument("--backends", type=backends_option(), default=names(),
                        help=f"comma-separated subset of {','.join(names())} (default: all; "
                        "a backend this machine cannot run is reported as skipped)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    parser.add_argument("--loss", default=None, metavar="NAME",
                        help="validate another loss's kernels (a registered name or a module file)")


def _fraction(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.3g}"


def format_table(rows: list[Row]) -> str:
    """backend, dtype, variant, cases, worst error as a fraction of its tolerance, verdict."""
    header = ("backend", "dtype", "variant", "cases", "worst/tol", "result")
    lines = []
    for row in rows:
        if row.skipped is not None:
            lines.append((row.backend, row.dtype, row.variant, "0", "-", f"skipped: {row.skipped}"))
            continue
        failed = [o for o in row.outcomes if not o.passed]
        verdict = "ok" if not failed else "FAIL: " + "; ".join(
            f"{o.case.label} ({o.error or o.worst})" for o in failed[:2])
        lines.append((row.backend, row.dtype, row.variant, str(len(row.outcomes)),
                      _fraction(row.fraction), verdict))
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(line, widths)), line[-1]]).rstrip()
                     for line in [header, *lines])


def _as_json(rows: list[Row], tree: Path, seconds: float) -> dict:
    return {
        "kernels": str(tree),
        "seconds": round(seconds, 3),
        "passed": all(row.passed or row.skipped is not None for row in rows),
        "rows": [
            {"backend": row.backend, "dtype": row.dtype, "variant": row.variant,
             "skipped": row.skipped, "passed": None if row.skipped else row.passed,
             "worst_fraction": None if math.isinf(row.fraction) else row.fraction,
             "cases": [{"case": o.case.label, "n_rows": o.case.n_rows,
                        "n_classes": o.case.n_classes,
                        "worst_fraction": None if math.isinf(o.fraction) else o.fraction,
                        "worst": o.worst, "error": o.error, "passed": o.passed}
                       for o in row.outcomes]}
            for row in rows
        ],
    }


def run(args: argparse.Namespace) -> int:
    try:
        tree = kernel_tree(args.kernels)
    except (TypeError, ValueError) as error:
        raise UserError(f"--kernels: {error}") from error
    if args.json is not None and not args.json.parent.is_dir():
        raise UserError(f"--json: cannot write {args.json}: folder {args.json.parent} does not exist")
    if args.loss is not None and resolve_loss(args.loss).name != DEFAULT:
        return _run_loss(args, tree)
    start = time.perf_counter()
    cases = grid()
    rows: list[Row] = []
    for name in args.backends:
        rows += validate_backend(backend(name), cases, tree,
                                 lambda text: print(text, file=sys.stderr, flush=True))
    seconds = time.perf_counter() - start
    print(format_table(rows))
    failed = [row for row in rows if not row.passed and row.skipped is None]
    print(f"{tree}: {len(failed)} of {len(rows)} rows failed in {seconds:.1f} s" if failed else
          f"{tree}: every kernel validated in {seconds:.1f} s", file=sys.stderr)
    if args.json is not None:
        args.json.write_text(json.dumps(_as_json(rows, tree, seconds), indent=2) + "\n")
    return 1 if failed else 0


def _run_loss(args: argparse.Namespace, tree: Path) -> int:
    from gradsmith.codegen import row_loss_runtime
    from gradsmith.codegen.registry import backend
    from gradsmith.codegen.validate.row_loss import validate_loss

    found = resolve_loss(args.loss)
    rows = []
    for name in [b for b in args.backends if b in row_loss_runtime.BACKENDS]:
        missing = backend(name).unavailable()
        if missing is not None:
            print(f"{found.name}  {name:<6} skipped: {missing}")
            continue
        for dtype in row_loss_runtime.DTYPES:
            function = row_loss_runtime.load(found, name, dtype, tree)
            rows += validate_loss(found, function, name, dtype)
    for row in rows:
        verdict = "ok" if row.passed else f"FAIL: {row.error or row.worst}"
        print(f"{found.name}  {row.backend:<6} {row.dtype:<8} C={row.classes:<3} "
              f"worst/tol {row.worst:.3g}  {verdict}")
    failed = [row for row in rows if not row.passed]
    print(f"{tree}: {found.name}: {len(failed)} of {len(rows)} rows failed" if failed else
          f"{tree}: {found.name}: every kernel validated", file=sys.stderr)
    return 1 if failed else 0
