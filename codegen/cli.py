"""The ``gradsmith`` command line: sub-commands dispatch to ``gradsmith.codegen.commands.<name>``."""

from __future__ import annotations

import argparse
import importlib
import sys

from gradsmith.derive.check import ProofError

COMMANDS = {
    "prove": "run every proof and print a table of claims",
    "latex": "print the step-by-step derivation as LaTeX (or Markdown, or a PDF)",
    "generate": "emit the kernels into generated/ (or check that they are up to date)",
    "demo": "train a softmax classifier on handwritten digits with every backend",
    "bench": "time the generated kernels beside PyTorch, textbook NumPy and memory bandwidth",
}


class UsageError(Exception):
    """Bad command-line input: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gradsmith", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        _command_module(name).add_arguments(command)
    return parser


def _command_module(name: str):
    return importlib.import_module(f"gradsmith.codegen.commands.{name}")


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(_command_module(args.command).run(args) or 0)
    except (UsageError, ValueError, TypeError, OSError, ProofError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if not isinstance(error, UsageError):
            message = f"gradsmith: error: {message}"
        print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradsmith: interrupted", file=sys.stderr)
        return 130
