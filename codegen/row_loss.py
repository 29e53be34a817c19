"""Lay out any row-loss kernel spec (``gradsmith.derive.row_loss``) for NumPy, C and CUDA.

Every expression is printed from the spec through ``print_code`` and the backends' printers;
the templates ``numpy/row_loss.py.j2``, ``c/row_loss.c.j2`` and ``cuda/row_loss.cu.j2`` hold
only the sweeps (and, for CUDA, the merge of the threads' partial rows).  Nothing here knows
the name or the formula of a loss.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable

import sympy as sp
from gradsmith.codegen.abi import SUFFIXES as CUDA_SUFFIXES
from gradsmith.codegen.backends.c.context import (
    SEGMENT_ROWS,
    TRANSPOSE_CASES,
    lane_context,
    printed_fast_functions,
    team_context,
)
from gradsmith.codegen.backends.c.printer import C_TYPES, KernelCPrinter
from gradsmith.codegen.backends.cuda.printer import ARITHMETICS, STORAGE, KernelCudaPrinter
from gradsmith.codegen.backends.numpy.printer import NUMPY_TYPES, KernelNumPyPrinter
from gradsmith.codegen.printing import check_reads, expression_hash, print_code
from gradsmith.codegen.render import c_identifier, render_with_preamble
from gradsmith.derive import row_loss as rl
from gradsmith.derive.losses import LOSSES, definition
from gradsmith.derive.row_loss_proofs import fast_row_values

BACKENDS = ("numpy", "c", "cuda")
DTYPES = ("float32", "float64")
SUFFIXES = {"float32": "f32", "float64": "f64"}
NUMPY_TEMPLATE = "numpy/row_loss.py.j2"
C_TEMPLATE = "c/row_loss.c.j2"
CUDA_TEMPLATE = "cuda/row_loss.cu.j2"
# Threads of a block of warp-owned rows (one row per warp up to WARP_ROW_MAX_CLASSES classes)
# and of a block that owns one longer row.
WARP_ROW_THREADS = 256
WARP_ROW_MAX_CLASSES = 1024
ROW_THREADS = 512
# Cross-entropy keeps its specialised kernels; every other registered loss is emitted generically.
SPECIALISED = ("cross_entropy",)


_PROVEN: set[tuple[str, int]] = set()


def _prove(found: rl.LossDefinition) -> None:
    """Every claim of the loss holds, or nothing of it is emitted (ProofError)."""
    from gradsmith.derive.row_loss_proofs import prove

    if (found.name, id(found)) not in _PROVEN:
        prove(found, definition)
        _PROVEN.add((found.name, id(found)))


def resolve_loss(loss) -> rl.LossDefinition:
    """The definition of a loss named on the command line; a bad name or a definition that does
    not fit is the user's error (one line, exit status 2)."""
    from gradsmith.codegen.errors import UserError

    try:
        return definition(loss)
    except (ValueError, TypeError) as error:
        raise UserError(str(error)) from error


def numpy_path(name: str, dtype: str) -> str:
    return f"numpy/gradsmith_{name}_{SUFFIXES[dtype]}.py"


def c_path(name: str) -> str:
    return f"c/gradsmith_{name}.c"


def cuda_path(name: str) -> str:
    return f"cuda/gradsmith_{name}.cu"


# The most classes a row has for C's lanes (more, and rows go one at a time): where the two
# cross over, timed from 8 to 192 classes on one thread (gcc 12, AMD EPYC): focal at 128 in
# float32 and 32 in float64; distillation KL, with a teacher's tile to transpose too, at 32
# and 16.
LANE_CLASSES = {("index", "float32"): 128, ("index", "float64"): 32,
                ("teacher", "float32"): 32, ("teacher", "float64"): 16}
# The functions C evaluates on their proven fast versions, by where they are called: each
# argument there is in the function's domain, as ``row_loss_proofs`` proves (the sweeps'
# exponents and the row values' are <= 0, the log-sum's argument >= 0).
SWEEP_FAST = ("exp",)
ROW_FAST = ("exp", "expm1")
LOG_SUM_FAST = ("log1p",)


def _printer(backend: str, dtype: str, fast: Iterable[str] = ()):
    """The printer of ``backend``; C calls the functions named in ``fast`` on their proven fast
    versions (no libm call, so the loops vectorise)."""
    if backend == "numpy":
        return KernelNumPyPrinter(dtype)
    if backend == "cuda":
        return KernelCudaPrinter(dtype)
    names = {f: f"gs_{f}_{SUFFIXES[dtype]}" for f in fast}
    return KernelCPrinter(dtype, function_names=names or None)


def _group(backend: str, dtype: str, outputs, prefix: str, inputs: Iterable[str],
           fast: Iterable[str] = ()) -> dict:
    printed = print_code([(str(name), expr) for name, expr in outputs],
                         _printer(backend, dtype, fast), temp_prefix=prefix)
    check_reads(prefix, printed.assignments, [*inputs, "np"] if backend == "numpy" else inputs)
    temporaries = {name for name, _ in printed.intermediates}
    return {"assignments": [(c_identifier(name), code, name in temporaries)
                            for name, code in printed.assignments],
            "op_count": printed.op_count}


def _normalizer(spec: rl.RowLossSpec, backend: str, dtype: str, logit: sp.Symbol,
                maximum: sp.Symbol, log_sum: sp.Symbol, options: list[str]) -> dict:
    """The printed sweep of one normalizer, its state named after its logits."""
    name = str(logit)
    rename = {rl.logit: logit, rl.scaled: sp.Symbol(f"{name}_scaled", real=True),
              rl.row_max: maximum,
              rl.sum_exp: sp.Symbol(f"{name}_sum_exp", positive=True),
              rl.top_count: sp.Symbol(f"{name}_top_count", nonnegative=True, integer=True),
              rl.top_excess: sp.Symbol(f"{name}_top_excess", nonnegative=True, integer=True),
              rl.rest_sum: sp.Symbol(f"{name}_rest_sum", nonnegative=True)}
    printer = _printer(backend, dtype, SWEEP_FAST)
    state = [str(rename[s]) for s in (rl.scaled, rl.row_max, rl.sum_exp)]
    split = {key: str(rename[s]) for key, s in (("top_count", rl.top_count),
                                                 ("top_excess", rl.top_excess),
                                                 ("rest_sum", rl.rest_sum))}
    scaled = _group(backend, dtype, [(rename[rl.scaled], spec.scaled_logit.xreplace(rename))],
                    f"{name}_a", [name, *options])
    return {
        "logit": name, "scaled": state[0], "max": state[1], "sum_exp": state[2],
        "log_sum": str(log_sum), "new_max": str(rl.new_max),
        "scaled_code": scaled,
        "term": printer.doprint(spec.normalizer_term.xreplace(rename)),
        "rescale": printer.doprint(spec.normalizer_rescale.xreplace(
            {rl.sum_exp: rename[rl.sum_exp], rl.old_max: rename[rl.row_max]})),
        "log_sum_code": _printer(backend, dtype, LOG_SUM_FAST).doprint(
            spec.normalizer_log_sum.xreplace(rename)),
        **split,
        "top_term": printer.doprint(spec.normalizer_top_term.xreplace(rename)),
        "rest_term": printer.doprint(spec.normalizer_rest_term.xreplace(rename)),
        "top_excess_code": printer.doprint(spec.normalizer_top_excess.xreplace(rename)),
        "split_sum": printer.doprint(spec.normalizer_split_sum.xreplace(rename)),
    }


# The scale of the logits, evaluated once per call where it is not a number (C and NumPy).
LOGIT_SCALE = sp.Symbol("logit_scale", positive=True)


def _hoisted(spec: rl.RowLossSpec) -> rl.RowLossSpec:
    """``spec`` with each scaled logit, ``scale * z``, read as ``logit_scale * z``, the scale
    evaluated once per call: every sweep multiplies by the same rounded scale, where printed as
    they are the maxima and sums divided by T and the gradient multiplied by CSE's 1 / T, and
    none divides (distillation KL 5-8% faster in C, one run, calls alternated)."""
    if spec.scale.is_number:
        return spec
    scaled = {spec.scale * symbol: LOGIT_SCALE * symbol
              for symbol in (rl.logit, rl.teacher_logit, rl.target_logit)}

    def values(pairs):
        return tuple((symbol, expr.xreplace(scaled)) for symbol, expr in pairs)

    return dataclasses.replace(spec, scaled_logit=spec.scaled_logit.xreplace(scaled),
                               row_values=values(spec.row_values),
                               element_values=values(spec.element_values))


def context(spec: rl.RowLossSpec, backend: str, dtype: str) -> dict:
    """Everything the row-loss template of ``backend`` lays out, printed in ``dtype``."""
    options = [c_identifier(option.name) for option in spec.options]
    scale_code = None
    if backend != "cuda" and not spec.scale.is_number:
        scale_code = _printer(backend, dtype).doprint(spec.scale)
        check_reads("the logits' scale", [(str(LOGIT_SCALE), scale_code)], options)
        fast_rows = fast_row_values(spec) is not None  # proven of the spec as derive states it
        spec = _hoisted(spec)
    else:
        fast_rows = fast_row_values(spec) is not None
    # What the printed code may read besides its own values: the options and the scale.
    call_values = options + ([str(LOGIT_SCALE)] if scale_code else [])
    normalizers = [_normalizer(spec, backend, dtype, logit, maximum, log_sum, call_values)
                   for logit, maximum, log_sum in spec.normalizers]
    gathered = [str(s) for s in spec.gathered]
    row_inputs = [n[key] for n in normalizers for key in ("max", "log_sum")] + gathered + call_values + [str(rl.grad_scale)]
    # C prints final values that read no sweep sum with the row values, so that what they share
    # (focal's (1 - p_t)^gamma, a libm call) is computed once; CUDA's and NumPy's layouts keep
    # the final values apart.
    merged = backend == "c" and not spec.accumulators
    row_values = list(spec.row_values) + (list(spec.final_values) if merged else [])
    rows = _group(backend, dtype, row_values, "r", row_inputs, ROW_FAST if fast_rows else ())
    row_names = [name for name, _, _ in rows["assignments"]]
    element_inputs = row_inputs + row_names + [str(n[0]) for n in spec.normalizers]
    element_outputs = list(spec.element_values) + [(sp.Symbol("dlogit"), spec.dlogit)]
    if spec.dlogit_at_target is not None:
        element_outputs.append((sp.Symbol("dlogit_at_target"), spec.dlogit_at_target))
    element_outputs += [(a.symbol, a.term) for a in spec.accumulators]
    elements = _group(backend, dtype, element_outputs, "e", element_inputs, SWEEP_FAST)
    accumulators = [str(a.symbol) for a in spec.accumulators]
    # The final values read each row sum as its total over the row.
    totals = {a.symbol: sp.Symbol(f"{a.symbol}_total", real=True) for a in spec.accumulators}
    final_values = [] if merged else [(s, e.xreplace(totals)) for s, e in spec.final_values]
    final = _group(backend, dtype, final_values, "f",
                   row_inputs + row_names + [str(s) for s in totals.values()])
    op_count = rows["op_count"] + elements["op_count"] + final["op_count"]
    values = {
        "name": c_identifier(spec.name),
        "kind": spec.kind,
        "class_weights": spec.class_weights,
        "dtype": dtype,
        "scalar_type": NUMPY_TYPES[dtype] if backend == "numpy" else C_TYPES[dtype],
        "suffix": SUFFIXES[dtype],
        "options": options,
        "scale_code": scale_code,  # logit_scale's, where the template evaluates it once
        "normalizers": normalizers,
        "gathered": gathered,
        "gathered_defaults": [_printer(backend, dtype).doprint(d) for d in spec.gathered_defaults],
        "rows": rows,
        "elements": elements,
        "accumulators": accumulators,
        "final": final,
        "has_target_coefficient": spec.dlogit_at_target is not None,
        "reads_class_alpha": str(rl.class_alpha) in _names(elements),
        "spec_hash": expression_hash(spec.expressions()),
        "op_count": op_count,
    }
    if backend == "c":
        values["fast_functions"] = printed_fast_functions(dtype)
        values["op_count"] += sum(f["op_count"] for f in values["fast_functions"].values())
        values.update(_lane_rows(rows, elements, final, normalizers, gathered))
        values["lanes"] = lane_context(dtype)
        values["lane_classes"] = LANE_CLASSES[spec.kind, dtype]
    return values


def _lane_rows(rows: dict, elements: dict, final: dict, normalizers: list[dict],
               gathered: list[str]) -> dict:
    """How the C lanes pass row values between their loops.  The row values run as one loop over
    the lanes up to the first that calls libm (a call the compiler cannot vectorise, focal's
    powf), the rest as a second loop; each value another loop reads is kept a lane each."""
    assignments = rows["assignments"]
    split = next((k for k, (_, code, _) in enumerate(assignments) if _calls_libm(code)),
                 len(assignments))
    vector, scalar = assignments[:split], assignments[split:]
    log_sums = [n["log_sum"] for n in normalizers]
    inputs = [n["max"] for n in normalizers] + gathered + [str(rl.grad_scale)]
    first = log_sums + [name for name, _, _ in vector]
    second = [name for name, _, _ in scalar]
    later = _names(elements) | _names(final)
    scalar_reads = _names({"assignments": scalar})
    lane_rows = [name for name in inputs + first + second
                 if name in later or name == str(rl.row_loss)]
    vector_stored = [name for name in first if name in lane_rows or name in scalar_reads]
    scalar_stored = [name for name in second if name in lane_rows]
    return {
        "row_vector": vector,
        "row_scalar": scalar,
        "lane_rows": lane_rows,  # read by the gradient sweep and the loss
        "lane_computed": vector_stored + scalar_stored,  # stored a lane each by the row loops
        "vector_stored": vector_stored,
        "scalar_stored": scalar_stored,
        "scalar_reads": [name for name in inputs + first if name in scalar_reads],
    }


def _calls_libm(code: str) -> bool:
    """Whether printed C calls a function other than the fast ones (gs_...)."""
    return any(not name.startswith("gs_") for name in re.findall(r"\b([A-Za-z_]\w*)\(", code))


def _names(group: dict) -> set[str]:
    """Every identifier a printed group reads."""
    return {name for _, code, _ in group["assignments"] for name in re.findall(r"[A-Za-z_]\w*", code)}


def numpy_abi(spec: rl.RowLossSpec) -> str:
    second = "teacher" if spec.kind == "teacher" else "target, alpha, ignore_index"
    options = "".join(f", {o.name}" for o in spec.options)
    return f"Python; rows(logits, {second}, grad_scale{options}, out) -> row_loss"


# The arguments of every gs_NAME_f32/f64, in order, with their C kinds ("real*": the variant's
# floating type), as row_loss.c.j2 declares them and the loaders pass them.
C_ARGUMENTS = (
    ("logits", "real*"), ("second", "real*"), ("target", "int64*"), ("alpha", "real*"),
    ("n_rows", "int64"), ("n_classes", "int64"), ("options", "double*"),
    ("ignore_index", "int64"), ("grad_scale", "real*"), ("row_loss", "real*"),
    ("dlogits", "real*"), ("bad_row", "int64*"),
)


def cuda_context(spec: rl.RowLossSpec) -> dict:
    """The CUDA template's context: per arithmetic type the printed sweeps of :func:`context`,
    the merge of two partial normalizers, and which names each device function binds."""
    arithmetics = []
    for dtype in ARITHMETICS:
        ctx = context(spec, "cuda", dtype)
        printer = _printer("cuda", dtype)
        statistics = [n[key] for n in ctx["normalizers"] for key in ("max", "log_sum")]
        later = _names(ctx["elements"]) | _names(ctx["final"])
        # The row struct: the statistics and row values the gradient sweep or the loss read.
        fields = [n for n in statistics + ctx["gathered"] + ["grad_scale"] if n in later]
        fields += [name for name, _, _ in ctx["rows"]["assignments"] if name in later]
        scaled = set().union(*(_names(n["scaled_code"]) for n in ctx["normalizers"]))
        arithmetics.append({
            **ctx,
            "real": printer.c_type,
            "merge_code": printer.doprint(spec.normalizer_merge),
            "row_fields": fields,
            "fold_options": [o for o in ctx["options"] if o in scaled],
            "row_options": [o for o in ctx["options"] if o in _names(ctx["rows"])],
            "element_reads": [f for f in fields + ctx["options"] if f in _names(ctx["elements"])],
            "final_reads": [f for f in fields + ctx["options"] if f in _names(ctx["final"])],
        })
    storages = [{"dtype": dtype, "type": storage_type, "suffix": CUDA_SUFFIXES[dtype],
                 "arithmetic": SUFFIXES[arithmetic],
                 "real": next(a["scalar_type"] for a in arithmetics if a["dtype"] == arithmetic)}
                for dtype, (storage_type, arithmetic) in STORAGE.items()]
    first = arithmetics[0]
    return {
        "name": first["name"], "kind": spec.kind, "class_weights": spec.class_weights,
        "options": first["options"], "option_checks": option_checks(spec),
        "arithmetics": arithmetics, "storages": storages,
        "warp_row_threads": WARP_ROW_THREADS, "warp_row_max_classes": WARP_ROW_MAX_CLASSES,
        "row_threads": ROW_THREADS,
        "spec_hash": expression_hash([*spec.expressions(), spec.normalizer_merge]),
        "op_count": sum(a["op_count"] for a in arithmetics),
    }


def cuda_abi(spec: rl.RowLossSpec) -> str:
    return (f"CUDA; int gs_{spec.name}_cuda_f32/f64/bf16/f16(the C ABI's arguments, device "
            "pointers but options, stream); *bad_row: the first bad target's row or -1, "
            "written on the stream")


def c_abi(spec: rl.RowLossSpec) -> str:
    arguments = ", ".join(name for name, _ in C_ARGUMENTS)
    return (f"C99; int gs_{spec.name}_f32/f64({arguments}); status codes "
            "GS_OK=0, NULL_POINTER=1, SHAPE=2, TARGET=3, PARAMS=4")


def render_loss(loss, backends: Iterable[str] = BACKENDS) -> dict[str, str]:
    """The emitted files of one loss (a name, a module path or a definition)."""
    found = definition(loss)
    _prove(found)
    spec = rl.kernel_spec(found)
    files: dict[str, str] = {}
    if "numpy" in backends:
        for dtype in DTYPES:
            files.update(render_with_preamble({numpy_path(spec.name, dtype): NUMPY_TEMPLATE},
                                              context(spec, "numpy", dtype), numpy_abi(spec)))
    if "c" in backends:
        ctx = {dtype: context(spec, "c", dtype) for dtype in DTYPES}
        fast_exps = [e for d in DTYPES for f in ctx[d]["fast_functions"].values()
                     for e in f["expressions"]]
        combined = {"spec_hash": expression_hash([*spec.expressions(), *fast_exps]),
                    "name": spec.name,
                    "op_count": sum(c["op_count"] for c in ctx.values()),
                    "variants": [ctx[d] for d in DTYPES], "options": ctx["float32"]["options"],
                    "option_checks": option_checks(spec), "kind": spec.kind,
                    "class_weights": spec.class_weights, "segment_rows": SEGMENT_ROWS,
                    "transpose_cases": TRANSPOSE_CASES, "team": team_context()}
        files.update(render_with_preamble({c_path(spec.name): C_TEMPLATE}, combined, c_abi(spec)))
    if "cuda" in backends:
        files.update(render_with_preamble({cuda_path(spec.name): CUDA_TEMPLATE},
                                          cuda_context(spec), cuda_abi(spec)))
    return files


def option_checks(spec: rl.RowLossSpec) -> list[str]:
    """C conditions that an option is outside its stated range (NaN fails every check)."""
    checks = []
    for index, option in enumerate(spec.options):
        value = f"options[{index}]"
        if option.low is not None:
            operator = "<=" if option.low_open else "<"
            checks.append(f"!({value} == {value}) || {value} {operator} {option.low!r}")
        if option.high is not None:
            checks.append(f"{value} > {option.high!r}")
        checks.append(f"{value} - {value} != 0.0")  # infinite
    return checks


def render_losses(backends: Iterable[str], extra: Iterable = ()) -> dict[str, str]:
    """Every registered loss that has no specialised kernels, and ``extra`` losses."""
    backends = tuple(b for b in backends if b in BACKENDS)
    files: dict[str, str] = {}
    for loss in [name for name in LOSSES if name not in SPECIALISED] + list(extra):
        files.update(render_loss(loss, backends))
    return files
