"""gradsmith latex: print the checked derivation as LaTeX or Markdown, or compile a PDF."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from gradsmith.codegen.atomic import write_atomically
from gradsmith.codegen.errors import UserError
from gradsmith.codegen.row_loss import resolve_loss
from gradsmith.derive.latex import FORMATS, document
from gradsmith.derive.losses import DEFAULT, definition
from gradsmith.derive.row_loss_latex import document as loss_document

PDFLATEX_SECONDS = 120


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=FORMATS, default="latex",
                        help="latex (default) or md (Markdown with $$ math)")
    parser.add_argument("--out", metavar="FILE", help="write the document to FILE")
    parser.add_argument("--loss", metavar="NAME", default=None,
                        help="the derivation of one loss: a registered name or a loss module file")
    parser.add_argument("--pdf", metavar="FILE", help="compile the LaTeX with pdflatex to FILE")


def run(args: argparse.Namespace) -> int:
    if args.pdf and args.format != "latex":
        raise UserError("--pdf needs --format latex")
    if args.pdf and shutil.which("pdflatex") is None:
        raise OSError("--pdf: pdflatex not found; install it (Debian: texlive-latex-base) "
                      "or use --out FILE.tex")
    for option, target in (("--out", args.out), ("--pdf", args.pdf)):
        folder = Path(target).parent if target else None
        if folder is not None and not folder.is_dir():
            raise OSError(f"{option}: cannot write {target}: folder {folder} does not exist")
    found = resolve_loss(args.loss) if args.loss is not None else None
    print("building and checking every derivation ...", file=sys.stderr)
    if found is not None and found.name != DEFAULT:
        text = loss_document(found, args.format, definition)
    else:
        text = document(args.format)
    if args.out:
        write_atomically(Path(args.out), text)
    if args.pdf:
        compile_pdf(text, Path(args.pdf))
    if not args.out and not args.pdf:
        sys.stdout.write(text)
    return 0


def compile_pdf(text: str, path: Path) -> None:
    """Run pdflatex twice in a scratch folder and move the PDF to ``path``."""
    with tempfile.TemporaryDirectory(prefix="gradsmith-latex-") as scratch:
        source = Path(scratch) / "derivation.tex"
        source.write_text(text)
        for _ in range(2):
            try:
                done = subprocess.run(
                    ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", source.name],
                    cwd=scratch, capture_output=True, text=True, timeout=PDFLATEX_SECONDS,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise OSError(f"--pdf: pdflatex ran over {PDFLATEX_SECONDS} s") from None
            if done.returncode != 0:
                raise OSError(f"--pdf: pdflatex failed: {_first_error(done.stdout)}")
        write_atomically(path, (Path(scratch) / "derivation.pdf").read_bytes())


def _first_error(log: str) -> str:
    for line in log.splitlines():
        if line.startswith("!"):
            return line.lstrip("! ").strip()
    return "see the pdflatex log"
