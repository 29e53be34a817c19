"""gradsmith generate: emit the kernels into generated/, or check that they are up to date."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradsmith.codegen.errors import UserError
from gradsmith.codegen.registry import backends_option, names
from gradsmith.codegen.render import diff_tree, render_all, write_tree
from gradsmith.codegen.row_loss import resolve_loss
from gradsmith.derive.row_loss_definition import RowLossError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("generated"), help="output folder (default: generated)")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing; exit 1 and show a diff if it differs")
    parser.add_argument("--backends", type=backends_option(), default=names(),
                        help=f"comma-separated subset of {','.join(names())} (default: all)")
    parser.add_argument("--loss", action="append", default=[], metavar="FILE",
                        help="also emit the loss defined in this module file (repeatable)")


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    for loss in args.loss:
        resolve_loss(loss)
    print(f"deriving and rendering {', '.join(args.backends)} ...", file=sys.stderr)
    try:
        files = render_all(args.backends, args.loss)
    except RowLossError as error:  # a definition that does not fit is the user's to fix
        raise UserError(str(error)) from error
    if args.check:
        diff = diff_tree(files, out, args.backends)
        if diff:
            sys.stdout.write(diff)
            print(f"{out} is out of date: run 'gradsmith generate' to update it", file=sys.stderr)
            return 1
        print(f"{out}: {len(files)} files up to date", file=sys.stderr)
        return 0
    report = write_tree(files, out, args.backends)
    for path in report.written:
        print(f"wrote {out / path}", file=sys.stderr)
    for path in report.removed:
        print(f"removed {out / path}", file=sys.stderr)
    print(
        f"{out}: {len(report.written)} written, {len(report.removed)} removed, "
        f"{len(report.unchanged)} unchanged",
        file=sys.stderr,
    )
    return 0
