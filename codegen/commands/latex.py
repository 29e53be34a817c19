"""gradsmith latex (not implemented yet)."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise ValueError("latex: not implemented yet")
