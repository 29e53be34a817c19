"""NumPy backend: one importable module per dtype, emitted from the kernel spec.

Each variant's row routine processes a block of rows at a time with every expression printed
from the spec: a sweep for the row maximum, then ``element_shifted``, ``exp_term`` and the
linear sums at that maximum (the whole row is in memory, so the online rescaling is not
needed), then ``row_values`` and the gradient written straight into the output block.  With
class targets the row sum leaves out the target's term (``others_sum``), and the target's
gradient is ``dlogit_target_from_others``.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from gradsmith.codegen.abi import SUFFIXES
from gradsmith.codegen.backends.numpy.printer import NUMPY_TYPES, KernelNumPyPrinter
from gradsmith.codegen.printing import PrintedCode, expression_hash, print_code
from gradsmith.codegen.registry import Backend
from gradsmith.codegen.render import c_identifier, preamble, render_template
from gradsmith.derive import kernel_spec as ks

TEMPLATE = "numpy/module.py.j2"
DTYPES = ("float32", "float64")
# Elements in a block of rows: its few buffers stay in cache (L2/L3) while the per-block
# Python overhead stays small; measured best at (4096, 32000) float32 among 2^15 .. 2^20.
BLOCK_ELEMENTS = 262144
# Elements per thread at least: on a 2-core AMD EPYC, 2^18 against 2^20 took 65536 x 10 from
# 10.0 to 7.8 ms and 262144 x 4 from 23.5 to 13.1 ms (float32); 2^17 was no better at 8192 x 1000.
THREAD_ELEMENTS = 1 << 18
# Rows of at most this many classes take their max and min column by column: a loop over
# columns beat NumPy's reduction along rows 2.5x to 25x for C = 4..32 and broke even at C = 64
# (blocks of 262144 float32 elements).
SHORT_ROW_CLASSES = 32
ABI = (
    "Python; cross_entropy(logits, target, *, weight, ignore_index, reduction, label_smoothing, "
    "lse_square_scale, softcap, grad_output, return_lse, out) -> (loss, dlogits[, lse])"
)

exp_term = sp.Symbol("exp_term", real=True)
linear_coefficient = sp.Symbol("linear_coefficient", real=True)
linear_term = sp.Symbol("linear_term", real=True)
_ARRAY_SYMBOLS = (ks.logit, ks.weight, ks.target_prob, ks.shifted, ks.transformed)


@dataclass(frozen=True)
class Group:
    """One print_code group: assignments in order and the block buffers they write into."""

    assignments: tuple[tuple[str, str], ...]
    buffers: tuple[str, ...]
    destinations: dict[str, str | None]
    scratch: int
    op_count: int


def print_group(
    outputs: list[tuple[str, sp.Expr]], dtype: str, prefix: str, arrays=_ARRAY_SYMBOLS
) -> Group:
    printer = KernelNumPyPrinter(dtype, arrays, temp_prefix=prefix, buffer_prefix=f"_{prefix}")
    printed: PrintedCode = print_code(outputs, printer, temp_prefix=prefix)
    # The printer records destinations in printing order: temporaries, then outputs.
    names = [c_identifier(name) for name, _ in printed.intermediates + printed.outputs]
    destinations = dict(zip(names, printer.destinations, strict=True))
    assignments = printed.assignments
    buffers = tuple(buffer for buffer in printer.destinations if buffer is not None)
    return Group(assignments, buffers, destinations, printer.scratch_count, printed.op_count)


def reuse_exp_term(spec: ks.KernelSpec) -> sp.Expr:
    """The spec's ``dlogit_from_stored`` with the exponential stored at the row maximum.

    The first sweep leaves exp(shifted) in a buffer (``exp_term``), so the gradient needs no
    second exponential of the block: stored_max = row_max makes the stored scale
    exp(-log_sum_exp) (the identity is checked by ``gradsmith.derive.kernel_spec.verify_spec``).
    """
    scale = spec.stored_scale_value.xreplace({ks.stored_shifted: 0})
    return spec.dlogit_from_stored.xreplace({ks.stored: exp_term, ks.stored_scale: scale})


def variant_context(spec: ks.KernelSpec, dtype: str) -> dict:
    """Printed code and structure flags of one variant's row routine."""
    transform = print_group([("transformed", spec.transform)], dtype, "a")
    shift = print_group([("shifted", spec.shifted_from_transformed)], dtype, "s")
    exponential = print_group([("exp_term", spec.exp_term)], dtype, "x")
    linear = print_group(
        [
            ("linear_coefficient", spec.linear_coefficient),
            ("linear_term", spec.linear_coefficient * ks.shifted),
        ],
        dtype,
        "l",
    )
    row_outputs = [(str(symbol), expr) for symbol, expr in spec.row_values]
    if spec.dlogit_target_from_others is not None:
        row_outputs.append(("dlogit_target", spec.dlogit_target_from_others))
    rows = print_group(row_outputs, dtype, "r", arrays=())
    others = (print_group([("sum_exp", spec.sum_exp_from_others)], dtype, "o", arrays=())
              if spec.sum_exp_from_others is not None else None)
    grad = print_group([("dlogit", reuse_exp_term(spec))], dtype, "g", _ARRAY_SYMBOLS + (exp_term,))
    groups = tuple(g for g in (transform, shift, exponential, linear, rows, grad, others) if g is not None)
    return {
        "name": c_identifier(spec.name),
        "spec": spec,
        "transform": transform,
        "shift": shift,
        "exp": exponential,
        "linear": linear,
        "rows": rows,
        "grad": grad,
        "sum_from_others": others,
        "grad_buffer": grad.destinations["dlogit"],
        "buffers": tuple(b for g in groups for b in g.buffers if b != grad.destinations["dlogit"]),
        "scratch": max(g.scratch for g in groups),
        "linear_optional": ks.linear_sums_unused_without_smoothing(spec),
        "grad_reads_logit": ks.logit in spec.dlogit.free_symbols,
        "op_count": sum(g.op_count for g in groups),
    }


def _scalar(expr: sp.Expr, dtype: str) -> str:
    return print_group([("value", expr)], dtype, "u", arrays=()).assignments[-1][1]


def _per_kind(specs, attribute: str, dtype: str) -> dict[str, str]:
    printed: dict[str, str] = {}
    for spec in specs:
        text = _scalar(getattr(spec, attribute), dtype)
        if printed.setdefault(spec.target_kind, text) != text:
            raise ValueError(f"{attribute} differs between variants of {spec.target_kind} targets")
    return printed


def _common(specs, attribute: str, dtype: str) -> str:
    (text,) = {_scalar(getattr(spec, attribute), dtype) for spec in specs}
    return text


def render_module(dtype: str, specs: tuple[ks.KernelSpec, ...] | None = None) -> str:
    """The module for one dtype, from ``specs`` (every variant by default)."""
    specs = ks.all_specs() if specs is None else specs
    variants = [variant_context(spec, dtype) for spec in specs]
    spec_hash = expression_hash(
        expr for spec in specs for _, expr in sorted(spec.expressions().items())
    )
    op_count = sum(variant["op_count"] for variant in variants)
    return render_template(
        TEMPLATE,
        preamble=preamble(TEMPLATE, spec_hash, op_count, ABI),
        dtype=dtype,
        scalar_type=NUMPY_TYPES[dtype],
        block_elements=BLOCK_ELEMENTS,
        thread_elements=THREAD_ELEMENTS,
        short_row_classes=SHORT_ROW_CLASSES,
        variants=variants,
        row_weight=_per_kind(specs, "row_weight", dtype),
        scale_mean=_common(specs, "scale_mean", dtype),
        scale_sum=_common(specs, "scale_sum", dtype),
        loss_mean=_common(specs, "loss_mean", dtype),
        mean_lse_square_scale=_common(specs, "mean_lse_square_scale", dtype),
    )


def module_path(dtype: str) -> str:
    return f"numpy/gradsmith_ce_{SUFFIXES[dtype]}.py"


def render() -> dict[str, str]:
    """The emitted modules, keyed by their path relative to generated/."""
    return {module_path(dtype): render_module(dtype) for dtype in DTYPES}


BACKEND = Backend(
    name="numpy", dtypes=DTYPES, devices=("cpu",),
    templates={module_path(dtype): TEMPLATE for dtype in DTYPES}, printer=KernelNumPyPrinter,
    render=render, runtime="gradsmith.codegen.backends.numpy.runtime", position=0,
)
