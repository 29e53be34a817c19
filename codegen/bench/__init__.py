"""``gradsmith bench``: the generated kernels timed beside PyTorch, textbook NumPy and a copy."""

from gradsmith.codegen.bench.report import format_table, write_json, write_plot
from gradsmith.codegen.bench.runner import run_benchmark
from gradsmith.codegen.bench.settings import Case, Settings, build_cases

__all__ = ["Case", "Settings", "build_cases", "format_table", "run_benchmark", "write_json", "write_plot"]
