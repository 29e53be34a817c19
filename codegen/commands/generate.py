"""gradsmith generate: emit the kernels into generated/, or check that they are up to date."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradsmith.codegen.render import BACKEND_NAMES, diff_tree, render_all, write_tree


def _backends(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in BACKEND_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(
            f"--backends takes a comma-separated subset of {','.join(BACKEND_NAMES)}, got {text!r}"
        )
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("generated"), help="output folder (default: generated)")
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing; exit 1 and show a diff if it differs")
    parser.add_argument("--backends", type=_backends, default=BACKEND_NAMES, help="comma-separated subset of numpy,c,cuda")
    parser.add_argument("--loss", action="append", default=[], metavar="FILE",
                        help="also emit the loss defined in this module file (repeatable)")


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} exists and is not a folder")
    print(f"deriving and rendering {', '.join(args.backends)} ...", file=sys.stderr)
    files = render_all(args.backends, args.loss)
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
