"""C99 printer for the kernels: float or double arithmetic, never promoted by accident.

``type_aliases`` maps SymPy's ``real`` to the kernel's type, so a float kernel prints
``expf``/``1.0F``; small integer powers print as products; ``function_names`` lets a kernel
call its own implementation of a function (a vectorisable exp, say).
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy as sp
from gradsmith.codegen.printing import print_piecewise
from sympy.codegen.ast import float32, float64, real
from sympy.core.mul import _keep_coeff
from sympy.printing.c import C99CodePrinter
from sympy.printing.precedence import PRECEDENCE

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
            base = self.parenthesize(expr.base, PRECEDENCE["Mul"])
            return "*".join([base] * int(exponent))
        if exponent.is_Integer and int(exponent) == -1:
            return f"{self._print(sp.Float(1))}/{self.parenthesize(expr.base, PRECEDENCE['Mul'])}"
        if exponent.is_Integer and -4 <= int(exponent) <= -2:
            return f"{self._print(sp.Float(1))}/({self._print(expr.base ** -exponent)})"
        return super()._print_Pow(expr)

    def _print_Mul(self, expr: sp.Mul) -> str:
        """SymPy's product, but a lone denominator that prints as a product (x**2 as x*x) is
        parenthesised: SymPy would print a/x**2 as a/x*x, which C reads as (a/x)*x."""
        coefficient, rest = expr.as_coeff_Mul()
        sign = "-" if coefficient < 0 else ""
        factors = sp.Mul.make_args(_keep_coeff(-coefficient, rest) if sign else expr)
        powers = [f for f in factors if f.is_Pow and f.exp.is_Integer and -4 <= int(f.exp) <= -2]
        others = [f for f in factors if f not in powers]
        if len(powers) != 1 or any(f.is_Pow and f.exp.is_negative for f in others):
            return super()._print_Mul(expr)
        numerator = sp.Mul(*others)
        top = (self._print(sp.Float(1)) if numerator == 1
               else self.parenthesize(numerator, PRECEDENCE["Mul"], strict=True))
        return f"{sign}{top}/({self._print(powers[0].base ** -powers[0].exp)})"

    def _print_Function(self, expr: sp.Function) -> str:
        name = self._function_names.get(type(expr).__name__)
        if name is not None:
            return f"{name}({', '.join(self._print(arg) for arg in expr.args)})"
        return super()._print_Function(expr)

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        """One-line nested conditional expressions (a select, which vectorises)."""
        return print_piecewise(self, expr, lambda condition, value, otherwise:
                               f"(({condition}) ? ({value}) : ({otherwise}))")

    def _print_exp(self, expr: sp.Expr) -> str:
        return self._print_Function(expr) if "exp" in self._function_names else super()._print_exp(expr)

    def _print_expm1(self, expr: sp.Expr) -> str:
        return self._print_Function(expr) if "expm1" in self._function_names else super()._print_expm1(expr)

    def _print_log(self, expr: sp.Expr) -> str:
        return self._print_Function(expr) if "log" in self._function_names else super()._print_log(expr)

    def _print_log1p(self, expr: sp.Expr) -> str:
        return self._print_Function(expr) if "log1p" in self._function_names else super()._print_log1p(expr)

    def _print_tanh(self, expr: sp.Expr) -> str:
        return self._print_Function(expr) if "tanh" in self._function_names else super()._print_tanh(expr)
