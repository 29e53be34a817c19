"""The ``gradsmith`` command line: sub-commands dispatch to ``gradsmith.codegen.commands.<name>``."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from gradsmith.codegen.errors import UserError
from gradsmith.derive.check import ProofError

# An unexpected exception inside gradsmith (BSD sysexits' EX_SOFTWARE), apart from bad input (2).
INTERNAL_ERROR = 70

COMMANDS = {
    "prove": "run every proof and print a table of claims",
    "latex": "print the step-by-step derivation as LaTeX (or Markdown, or a PDF)",
    "generate": "emit the kernels into generated/ (or check that they are up to date)",
    "demo": "train a softmax classifier on handwritten digits with every backend",
    "bench": "time the generated kernels beside PyTorch, textbook NumPy and memory bandwidth",
    "validate": "compile or import every kernel of a tree and check it against the reference",
}


class UsageError(UserError):
    """Bad command-line syntax, as argparse reports it."""


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
    """Run one command: bad input (a :class:`UserError`, a file that cannot be read or written,
    a failed proof) is one line and exit status 2; any other exception is an internal error,
    reported with its traceback and exit status 70."""
    try:
        args = build_parser().parse_args(argv)
        return int(_command_module(args.command).run(args) or 0)
    except (UserError, OSError, ProofError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        if not isinstance(error, UsageError):
            message = f"gradsmith: error: {message}"
        print(message, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradsmith: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every other exception is a bug in gradsmith
        traceback.print_exc(file=sys.stderr)
        print(f"gradsmith: internal error: {type(error).__name__}: {error}", file=sys.stderr)
        return INTERNAL_ERROR
