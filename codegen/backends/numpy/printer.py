"""NumPy printer for the kernels: one floating dtype, never upcast, arrays updated in place.

Scalar and per-row expressions print as ordinary NumPy code with constants as
``np.float32(...)`` (or ``np.float64``) and plain ints where exact.  An expression that
involves a block-of-rows array (a symbol listed in ``elementwise``) prints as nested ufunc
calls that write into preallocated buffers with ``out=``: the result goes into the call's
destination buffer and sub-results into shared scratch buffers ``_w1, _w2, ...``, so a block
costs no allocation of its own size.
"""

from __future__ import annotations

from collections.abc import Iterable

import sympy as sp
from gradsmith.codegen.printing import print_piecewise
from sympy.printing.numpy import NumPyPrinter

NUMPY_TYPES = {"float32": "np.float32", "float64": "np.float64"}
_UFUNCS = {"exp": "np.exp", "log": "np.log", "tanh": "np.tanh"}


class KernelNumPyPrinter(NumPyPrinter):
    """Print SymPy expressions as NumPy code in one dtype.

    ``elementwise`` names the symbols bound to arrays of a block's shape.  Each ``doprint``
    of an expression that involves one of them writes into a destination buffer named
    ``{buffer_prefix}{i}`` (``i`` counts ``doprint`` calls); the list ``destinations`` records,
    per call, that buffer or ``None`` when no buffer was needed.  Because ``print_code`` prints
    its CSE temporaries ``{temp_prefix}0, 1, ...`` in order before the outputs, the temporary
    of call ``i`` is known to be elementwise when its expression was.
    """

    def __init__(
        self,
        dtype: str,
        elementwise: Iterable[sp.Symbol] = (),
        *,
        temp_prefix: str = "t",
        buffer_prefix: str = "_b",
    ):
        if dtype not in NUMPY_TYPES:
            raise ValueError(f"dtype must be one of {tuple(NUMPY_TYPES)}, got {dtype!r}")
        super().__init__(settings={"fully_qualified_modules": True})
        self.scalar_type = NUMPY_TYPES[dtype]
        self.elementwise = {str(symbol) for symbol in elementwise}
        self.temp_prefix = temp_prefix
        self.buffer_prefix = buffer_prefix
        self.destinations: list[str | None] = []
        self.scratch_count = 0

    # -- constants and scalar code ---------------------------------------------------------

    def _module_format(self, fqn: str, register: bool = True) -> str:
        return "np." + fqn.split(".", 1)[1] if fqn.startswith("numpy.") else fqn

    def _print_Float(self, expr: sp.Float) -> str:
        value = float(expr)
        if value.is_integer() and abs(value) < 2**24:
            return str(int(value))
        return f"{self.scalar_type}({value!r})"

    def _print_Rational(self, expr: sp.Rational) -> str:
        if expr.q == 1:
            return str(expr.p)
        # Both parts exact in the dtype, so the division rounds once, in the dtype.
        return f"({self.scalar_type}({expr.p})/{self.scalar_type}({expr.q}))"

    def _print_Half(self, expr: sp.Rational) -> str:
        return self._print_Rational(expr)

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        base, exponent = expr.base, expr.exp
        precedence = sp.printing.precedence.PRECEDENCE
        if exponent.is_Integer and int(exponent) < 0:
            denominator = base if int(exponent) == -1 else sp.Pow(base, -exponent, evaluate=False)
            return f"1/{self.parenthesize(denominator, precedence['Pow'])}"
        if exponent.is_Integer:
            return f"{self.parenthesize(base, precedence['Pow'])}**{int(exponent)}"
        return f"np.power({self._print(base)}, {self._print(exponent)})"

    def _print_Piecewise(self, expr: sp.Piecewise) -> str:
        """Nested ``np.where``: every branch is evaluated (callers silence the error state),
        and the first whose condition holds is taken."""
        return print_piecewise(self, expr, lambda condition, value, otherwise:
                               f"np.where({condition}, {value}, {otherwise})")

    # -- elementwise code -------------------------------------------------------------------

    def is_elementwise(self, expr: sp.Basic) -> bool:
        return any(str(symbol) in self.elementwise for symbol in expr.free_symbols)

    def doprint(self, expr, assign_to=None) -> str:
        call = len(self.destinations)
        expr = sp.sympify(expr)
        if not self.is_elementwise(expr):
            self.destinations.append(None)
            return super().doprint(expr, assign_to)
        self.elementwise.add(f"{self.temp_prefix}{call}")
        if expr.is_Symbol:
            self.destinations.append(None)
            return str(expr)
        destination = f"{self.buffer_prefix}{call}"
        self.destinations.append(destination)
        return self._into(expr, 0, destination)

    def _buffer(self, slot: int, destination: str) -> str:
        if slot == 0:
            return destination
        self.scratch_count = max(self.scratch_count, slot)
        return f"_w{slot}"

    def _operand(self, expr: sp.Expr, slot: int, destination: str) -> str:
        """Code for ``expr`` as a ufunc operand: plain when per-row or a bare array name."""
        if not self.is_elementwise(expr):
            return super().doprint(expr)
        if expr.is_Symbol:
            return str(expr)
        return self._into(expr, slot, destination)

    def _into(self, expr: sp.Expr, slot: int, destination: str) -> str:
        """Code that evaluates the elementwise ``expr`` into buffer ``slot`` and returns it."""
        out = self._buffer(slot, destination)
        if expr.is_Add:
            return self._combine(expr.args, slot, destination, "np.add", "np.subtract", sp.Add)
        if expr.is_Mul:
            return self._combine(expr.args, slot, destination, "np.multiply", "np.divide", sp.Mul)
        if expr.is_Pow and expr.exp.is_Integer:
            power = int(expr.exp)
            inner = self._operand(expr.base, slot, destination)
            if power == 2:
                return f"np.square({inner}, out={out})"
            if power == -1:
                return f"np.reciprocal({inner}, out={out})"
            return f"np.power({inner}, {power}, out={out})"
        name = type(expr).__name__
        if name in _UFUNCS and len(expr.args) == 1:
            return f"{_UFUNCS[name]}({self._operand(expr.args[0], slot, destination)}, out={out})"
        raise ValueError(f"cannot print {expr} elementwise in place (unsupported {name})")

    def _combine(self, args, slot, destination, forward, inverse, make) -> str:
        """Fold an Add or Mul left to right into buffer ``slot``; per-row terms go in as one."""
        out = self._buffer(slot, destination)
        arrays = [arg for arg in args if self.is_elementwise(arg)]
        rows = make(*[arg for arg in args if not self.is_elementwise(arg)])
        terms = []  # (inverted, expression): a - b is a + (-b), a / b is a * b**-1
        for arg in arrays:
            if make is sp.Add and arg.could_extract_minus_sign():
                terms.append((True, -arg))
            elif make is sp.Mul and arg.is_Pow and arg.exp.is_Integer and int(arg.exp) < 0:
                terms.append((True, sp.Pow(arg.base, -arg.exp)))
            else:
                terms.append((False, arg))
        terms.sort(key=lambda term: term[0])  # a non-inverted term first, when there is one
        inverted, first = terms[0]
        identity = sp.Integer(0) if make is sp.Add else sp.Integer(1)
        if inverted:
            code = f"{inverse}({super().doprint(rows)}, {self._operand(first, slot, destination)}, out={out})"
        else:
            code = self._operand(first, slot, destination)
            # One pass for all per-row terms; a lone per-row divisor stays a division.
            numerator, denominator = rows.as_numer_denom() if make is sp.Mul else (rows, 1)
            if make is sp.Add and rows.could_extract_minus_sign():
                code = f"{inverse}({code}, {super().doprint(-rows)}, out={out})"
            elif make is sp.Mul and numerator == 1 and denominator != 1:
                code = f"{inverse}({code}, {super().doprint(denominator)}, out={out})"
            elif rows != identity:
                code = f"{forward}({code}, {super().doprint(rows)}, out={out})"
        for inverted, term in terms[1:]:
            operand = self._operand(term, slot + 1, destination)
            code = f"{inverse if inverted else forward}({code}, {operand}, out={out})"
        return code
