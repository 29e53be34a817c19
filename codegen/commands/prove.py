"""gradsmith prove: check every claim (symbolic C, each concrete C, the kernel specs)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from gradsmith.codegen.errors import UserError
from gradsmith.codegen.row_loss import resolve_loss
from gradsmith.derive.claims import (
    SYMBOLIC_GROUP,
    ClaimResult,
    loss_results,
    parse_classes,
    registry,
    run_claims,
)
from gradsmith.derive.losses import DEFAULT
from gradsmith.derive.row_loss_definition import RowLossError

DEFAULT_CLASSES = "1..16"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--classes", default=DEFAULT_CLASSES, metavar="LIST",
        help=f"concrete numbers of classes to prove for: 1..16, 3,5,8 (default {DEFAULT_CLASSES})",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--loss", metavar="NAME", default=None,
                        help="prove one loss only: a registered name or a loss module file")
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), metavar="N",
        help="worker processes (default: 2, or 1 on a single core)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        class_counts = parse_classes(args.classes)
    except ValueError as error:
        raise UserError(str(error)) from error
    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {args.jobs}")
    claims = registry(class_counts)
    if args.loss is not None:
        found = resolve_loss(args.loss)
        if found.name != DEFAULT:
            try:
                return _report(args, loss_results(args.loss), 0.0)
            except RowLossError as error:
                raise UserError(str(error)) from error
    start = time.perf_counter()
    results = run_claims(claims, jobs=args.jobs, progress=_progress)
    return _report(args, results, time.perf_counter() - start)


def _report(args: argparse.Namespace, results: list[ClaimResult], wall: float) -> int:
    wall = wall or sum(result.seconds for result in results)
    all_hold = all(result.holds for result in results)
    if args.json:
        print(json.dumps(_as_json(results, wall, all_hold), indent=2))
    else:
        print(_table(results, wall))
    return 0 if all_hold else 1


def _progress(done: int, total: int, result: ClaimResult) -> None:
    mark = "ok" if result.holds else "FAILS"
    print(f"[{done:>3}/{total}] {mark:5} {result.name} (C={result.classes}) "
          f"{result.seconds:.2f} s", file=sys.stderr, flush=True)


def _group_seconds(results: list[ClaimResult]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for result in results:
        totals[result.group] = totals.get(result.group, 0.0) + result.seconds
    return totals


def _as_json(results: list[ClaimResult], wall: float, all_hold: bool) -> dict:
    return {
        "all_hold": all_hold,
        "wall_seconds": round(wall, 3),
        "group_seconds": {k: round(v, 3) for k, v in _group_seconds(results).items()},
        "claims": [result.as_dict() for result in results],
    }


def _table(results: list[ClaimResult], wall: float) -> str:
    header = ("claim", "C", "method", "result", "seconds")
    rows = [(r.name, r.classes, r.method, r.result, f"{r.seconds:.2f}") for r in results]
    widths = [max(len(row[n]) for row in [header, *rows]) for n in range(len(header))]
    line = "  ".join(f"{{:<{width}}}" for width in widths)
    out = [line.format(*header), line.format(*("-" * width for width in widths))]
    out += [line.format(*row) for row in rows]
    failures = [r for r in results if not r.holds]
    out.append("")
    for result in failures:
        out.append(f"FAILS {result.name} (C={result.classes}): {result.detail}")
    assumptions = sorted({a.split(":")[0] for r in results for a in r.assumptions})
    if assumptions:
        out.append("assumptions used: " + "; ".join(assumptions))
    groups = _group_seconds(results)
    out.append(f"{SYMBOLIC_GROUP}: {groups.get(SYMBOLIC_GROUP, 0.0):.2f} s of checking; "
               f"all claims: {wall:.2f} s wall")
    held = sum(r.holds for r in results)
    out.append(f"{held} of {len(results)} claims hold")
    return "\n".join(out)
