"""What the CUDA templates lay out: every expression of every variant, printed per arithmetic type.

Each function of a variant is one ``print_code`` group; its inputs are bound by name from the
function's arguments (see ``_BINDINGS``), and a group that reads a name with no binding is
refused, so a change in the derivation either prints or fails loudly, never silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import sympy as sp
from gradsmith.codegen.abi import SUFFIXES
from gradsmith.codegen.backends.cuda.printer import ARITHMETICS, STORAGE, KernelCudaPrinter
from gradsmith.codegen.printing import check_reads, expression_hash, print_code
from gradsmith.codegen.render import TemplateError
from gradsmith.derive import kernel_spec as ks

transformed = sp.Symbol("transformed", real=True)
linear_coefficient = sp.Symbol("linear_coefficient", real=True)
target_class_weight = sp.Symbol("target_class_weight", real=True)

_CONSTS = {name: f"k.{name}" for name in ("label_smoothing", "lse_square_scale", "softcap", "num_classes")}
_STATE = {name: f"s.{name}" for name in ("row_max", "sum_exp", "weight_sum", "shifted_sum")}

WARP_ROW_MAX_CLASSES = 1024  # up to this many classes a warp owns a row, above it a block
ROW_THREADS = 512  # threads of a block that owns a row
WARP_ROW_THREADS = 256  # threads (8 rows) of a block of warp-owned rows
SERIAL_THREADS = 512  # threads of the single-block denominator and loss kernels


def _group(
    group: str,
    outputs: Sequence[tuple[str | sp.Symbol, sp.Expr]],
    printer: KernelCudaPrinter,
    prefix: str,
    bindings: Mapping[str, str | None],
) -> dict:
    """Print a group and bind each free input: ``None`` marks a parameter of the function.

    Outputs that read earlier outputs keep reading them by name (each is emitted, in dependency
    order): substituting them would let SymPy reassociate the spec's evaluation order, e.g.
    ``log_sum_exp - target_shifted`` into ``lse - target_logit`` or ``exp(shifted -
    log_sum_exp)`` into ``exp(-log_sum_exp + logit - row_max)``, which round the row's log-sum
    away next to logits of large magnitude.
    """
    printed = print_code(outputs, printer, temp_prefix=prefix)
    names = {str(name) for name, _ in outputs}
    free = sorted({str(s) for _, e in outputs for s in sp.sympify(e).free_symbols} - names)
    unbound = [name for name in free if name not in bindings]
    if unbound:
        raise TemplateError(f"cuda group {group} reads {unbound}, which no argument provides")
    try:
        check_reads(f"cuda {group}", printed.assignments, set(free))
    except ValueError as error:
        raise TemplateError(str(error)) from error
    return {
        "bindings": tuple((n, bindings[n]) for n in free if bindings[n] is not None),
        "assignments": printed.assignments,
        "op_count": printed.op_count,
    }


def _variant(spec: ks.KernelSpec, arithmetic: str) -> dict:
    real = KernelCudaPrinter(arithmetic)
    wide = KernelCudaPrinter("float64")
    index = spec.target_kind == "index"
    element = {"weight": None, "target_prob": None, **_CONSTS}
    if spec.transform.free_symbols - {ks.logit, ks.softcap}:
        raise TemplateError(f"cuda: the transform of {spec.name} reads more than the logit")
    shifted_of_transform = spec.element_shifted.subs(spec.transform, transformed)
    row_values = [str(symbol) for symbol, _ in spec.row_values]
    for needed in ("loss", "lse"):
        if needed not in row_values:
            raise TemplateError(f"cuda: the spec of {spec.name} has no row value {needed!r}")
    row_fields = ["row_max", "grad_scale", *row_values] + (["dlogit_target"] if index else [])
    groups = {
        "transform": _group("transform", [("transformed", spec.transform)], real, "m",
                            {"logit": None, **_CONSTS}),
        "accumulate": _group(
            "accumulate",
            [
                (ks.shifted, shifted_of_transform),
                ("exp_term", spec.exp_term),
                (linear_coefficient, spec.linear_coefficient),
                ("shifted_term", linear_coefficient * ks.shifted),
            ],
            real, "a", {"transformed": None, "row_max": "s.row_max", **element},
        ),
        "rescale": _group(
            "rescale",
            [("rescaled_sum_exp", spec.rescale_sum_exp),
             ("rescaled_shifted_sum", spec.rescale_shifted_sum)],
            real, "u", {**_STATE, "old_max": "s.row_max", "new_max": None, **_CONSTS},
        ),
        "merge": _group(
            "merge",
            [("merged_sum_exp", spec.merge_sum_exp),
             ("merged_shifted_sum", spec.merge_shifted_sum)],
            real, "g", {**_STATE, "old_max": "s.row_max", "new_max": None, **_CONSTS},
        ),
        "row": _group(
            "row",
            list(spec.row_values) + ([("dlogit_target", spec.dlogit_target)] if index else []),
            real, "r",
            {**_STATE, "target_logit": None, "target_weight": None, "grad_scale": None, **_CONSTS},
        ),
        "dlogit": _group(
            "dlogit",
            [(ks.shifted, spec.element_shifted), (ks.dlogit, spec.dlogit)],
            real, "d",
            {"logit": None, **element, **{f: f"r.{f}" for f in row_fields}},
        ),
        # The target's weight and the row's share of the mean's denominator.
        "row_weight": _group(
            "row_weight",
            ([(ks.target_weight, spec.linear_coefficient.subs(ks.weight, target_class_weight))]
             if index else []) + [("row_weight", spec.row_weight)],
            real, "w", {"target_class_weight": None},
        ),
        # Reductions and scales run in double whatever the storage.
        "scale_mean": _group("scale_mean", [("scale_mean", spec.scale_mean)], wide, "s",
                             {"grad_output": None, "denominator": None}),
        "scale_sum": _group("scale_sum", [("scale_sum", spec.scale_sum)], wide, "s",
                            {"grad_output": None}),
        "loss_mean": _group("loss_mean", [("loss_mean", spec.loss_mean)], wide, "l",
                            {"loss_total": None, "denominator": None}),
        "mean_lse_square_scale": _group(
            "mean_lse_square_scale", [("mean_lse_square_scale", spec.mean_lse_square_scale)],
            wide, "z", {"lse_square_scale": None, "denominator": None, "counted_rows": None}),
    }
    if "logit" in {n for n, _ in groups["accumulate"]["bindings"]}:
        raise TemplateError(f"cuda: the first sweep of {spec.name} reads the raw logit")
    return {
        "name": spec.name,
        "struct": f"{spec.name}_{SUFFIXES[arithmetic]}",
        "index": index,
        "weighted": spec.weighted,
        "softcapped": spec.softcapped,
        "linear_optional": ks.linear_sums_unused_without_smoothing(spec),
        "row_fields": row_fields,
        "groups": groups,
        "op_count": sum(g["op_count"] for g in groups.values()),
    }


def kernel_context() -> dict:
    """Both CUDA templates' context: the variants per arithmetic type, the storages, the sizes."""
    arithmetics = []
    for arithmetic in ARITHMETICS:
        suffix = SUFFIXES[arithmetic]
        variants = [_variant(spec, arithmetic) for spec in ks.all_specs()]
        arithmetics.append({
            "real": KernelCudaPrinter(arithmetic).c_type,
            "suffix": suffix,
            "variants": variants,
        })
    storages = [
        {"dtype": dtype, "type": storage_type, "real": KernelCudaPrinter(dtype).c_type,
         "arithmetic": SUFFIXES[arithmetic], "suffix": SUFFIXES[dtype]}
        for dtype, (storage_type, arithmetic) in STORAGE.items()
    ]
    expressions = [expr for spec in ks.all_specs() for expr in spec.expressions().values()]
    return {
        "arithmetics": arithmetics,
        "storages": storages,
        "warp_row_max_classes": WARP_ROW_MAX_CLASSES,
        "row_threads": ROW_THREADS,
        "warp_row_threads": WARP_ROW_THREADS,
        "serial_threads": SERIAL_THREADS,
        "spec_hash": expression_hash(expressions),
        "op_count": sum(v["op_count"] for a in arithmetics for v in a["variants"]),
    }
