"""C99 printer for the kernels: float or double arithmetic, never promoted by accident.

``type_aliases`` maps SymPy's ``real`` to the kernel's type, so a float kernel prints
``expf``/``1.0F``; small integer powers print as products; ``function_names`` lets a kernel
call its own implementation of a function (a vectorisable exp, say).
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy as sp
from sympy.codegen.ast import float32, float64, real
from sympy.printing.c import C99CodePrinter

C_TYPES = {"float32": "float", "float64": "double"}
_SYMPY_TYPES = {"float32": float32, "float64": float64}


class KernelCPrinter(C99CodePrinter):
    """C99 printer in one floating type, with products for small integer powers."""

    def __init__(self, dtype: str, function_names: Mapping[str, str] | None = None):
        if dtype not in _SYMPY_TYPES:
            raise ValueError(f"dtype must be one of {tuple(_SYMPY_TYPES)}, got {dtype!r}")
        super().__init__(settings={"type_aliases": {real: _SYMPY_TYPES[dtype]}})
        self.c_type = C_TYPES[dtype]
        self._function_names = dict(function_names or {})

    def _print_Pow(self, expr: sp.Pow) -> str:
        exponent = expr.exp
        if exponent.is_Integer and 2 <= int(exponent) <= 4:
            base = self.parenthesize(expr.base, sp.printing.precedence.PRECEDENCE["Mul"])
            return "*".join([base] * int(exponent))
        if exponent.is_Integer and int(exponent) == -1:
            return f"{self._print(sp.Float(1))}/{self.parenthesize(expr.base, sp.printing.precedence.PRECEDENCE['Mul'])}"
        return super()._print_Pow(expr)

    def _print_Function(self, expr: sp.Function) -> str:
        name = self._function_names.get(type(expr).__name__)
        if name is not None:
            return f"{name}({', '.join(self._print(arg) for arg in expr.args)})"
        return super()._print_Function(expr)

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        """One-line nested conditional expressions (a select, which vectorises)."""
        *branches, (otherwise, last_condition) = expr.args
        if last_condition != sp.true:
            raise ValueError(f"Piecewise without a default branch cannot be printed: {expr}")
        code = self._print(otherwise)
        for value, condition in reversed(branches):
            code = f"(({self._print(condition)}) ? ({self._print(value)}) : ({code}))"
        return code

    def _print_exp(self, expr: sp.Expr) -> str:
        return self._print_Function(expr) if "exp" in self._function_names else super()._print_exp(expr)

    def _print_expm1(self, expr: sp.Expr) -> str:
        return self._print_Function(expr) if "expm1" in self._function_names else super()._print_expm1(expr)

    def _print_log(self, expr: sp.Expr) -> str:
        return self._print_Function(expr) if "log" in self._function_names else super()._print_log(expr)

    def _print_tanh(self, expr: sp.Expr) -> str:
        return self._print_Function(expr) if "tanh" in self._function_names else super()._print_tanh(expr)
