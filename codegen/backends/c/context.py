"""What the C templates lay out: every expression of every variant, printed per dtype.

Expressions come from ``gradsmith.derive.kernel_spec`` (the loss, the gradient, the online normalizer)
and ``gradsmith.derive.fast_exp``, ``fast_expm1``, ``fast_log``, ``fast_log1p`` and ``fast_tanh`` (the
vectorisable exp, expm1, log, log1p and tanh).  Each group of assignments is printed with one
``print_code`` call so that CSE temporaries stay in the scope where the template places them,
and ``check_reads`` makes sure that no assignment reads a name assigned after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import sympy as sp
from gradsmith.codegen.abi import SUFFIXES
from gradsmith.codegen.backends.c.printer import C_TYPES, KernelCPrinter
from gradsmith.codegen.printing import (
    PrintedCode,
    check_reads,
    expression_hash,
    names_read,
    print_code,
    print_expression,
)
from gradsmith.derive import kernel_spec as ks
from gradsmith.derive.fast_exp import exp_approximation, verify_exp_approximation
from gradsmith.derive.fast_expm1 import expm1_approximation, verify_expm1_approximation
from gradsmith.derive.fast_log import log_approximation, verify_log_approximation
from gradsmith.derive.fast_log1p import log1p_approximation, verify_log1p_approximation
from gradsmith.derive.fast_tanh import tanh_approximation, verify_tanh_approximation

DTYPES = ("float32", "float64")
CHUNK = 512  # elements per online-normalizer step: the chunk stays in L1 between its two loops
# Chunks whose running maximum a row keeps on the stack, so that the gradient reuses the
# exponentials the first sweep stored; longer rows compute them again.
STORED_CHUNKS = 4096
# The maximum's chunk, summed whole, is split again from its stored terms when its sum is below
# this: then the rest (sum - 1 with one element at the maximum) is under 1 and would lose digits
# in the rounded sum; at or above it, sum - 1 >= 1 keeps them (or two elements are at the maximum).
RESPLIT_SUM = 2
# Chunks shorter than this are summed with 256-bit vectors (elements per vector below).
SHORT_CHUNK = 64
SHORT_SIMDLEN = {"float32": 8, "float64": 4}
# Lanes per vector in the loops over a segment's lanes: 512 bits (with AVX-512 they ran 9% faster
# than gcc's default 256 at 65536x10 and 7% at 262144x4, one thread; elsewhere a hint).
LANE_SIMDLEN = {"float32": 16, "float64": 8}
# The integer as wide as a lane, for the short rows' target classes.
LANE_INT = {"float32": "int32_t", "float64": "int64_t"}
ROW_BLOCK = 4096  # segments per parallel region, their sums kept for a serial double sum
# Rows per segment, summed in order by one thread.  The short rows' loops over lanes are
# latency-bound: with 256-bit vectors (AMD EPYC Zen 2, AVX2) 32 rows were 7% faster than 16 at
# C = 10 and 17% at C = 4 (one thread), 64 no faster.  With 512-bit ones (Zen 4, AVX-512) 64 rows
# were faster than 32 in float32 by 13-19% at C = 4, 8-15% at C = 10, 6-8% at C = 32 and 3-6% at
# C = 64, level from 100 to 192 classes; in float64 by 7-9% at C = 32, level at 4 and 80, 3-4%
# slower at 10 (two threads, three alternated runs).
SEGMENT_ROWS = 64
# Elements per thread below which a thread costs more than it saves: two threads broke even
# between 20480 and 40960 elements at C = 10 and between 32000 and 64000 at C = 1000.
PARALLEL_MIN_ELEMENTS = 32768
# Elements per chunk of rows handed to a thread: small enough that a thread whose core is
# taken holds back little work, large enough that handing out chunks costs nothing.
PARALLEL_CHUNK_ELEMENTS = 32768
# Elements run on the calling thread alone after parallel regions that took longer than their
# fastest thread alone would have (other cores busy, or a thread slow to wake), before the team
# is tried again.  The first run is short (one thread's work of about 1 ms at C = 32000 and
# 2.5 ms at C = 10, AMD EPYC, AVX2): a slow start on a quiet machine costs a call or two.  Each
# first team region after a run that is late again doubles the next run, up to the longest (about
# 60 ms at C = 32000 and 150 ms at C = 10), so a busy machine is re-checked ever more rarely;
# each region on time halves it.  A run starts only after LATE_REGIONS late regions in a row
# (one, right after a run): on a quiet machine a single late region is a thread preempted once.
LATE_TEAM_SERIAL_MIN = 1 << 20
LATE_TEAM_SERIAL_MAX = 1 << 26
LATE_REGIONS = 2
# A late retry's run also lasts at least this many times what that region lost against one
# thread, in one thread's time: on a busy machine a late region waits out another process's time
# slice (5-8 ms, several calls' work at small shapes), and doubling from the shortest run
# re-tried the team every few calls.  What it lost, not its whole time: a retry that is only a
# little late (a thread slow to wake after the run) then costs two calls on one thread, not eight.
# Only a retry: the first regions after a pause are often late on a quiet machine too (a thread
# slow to wake), and a floor there kept 57 of 120 calls on one thread in 10 rounds of 12 after
# 1 s pauses (4 of 120 without it, 9 with it on retries).  One core spun by another process,
# fresh processes (AMD EPYC, 2 cores, float32): the median of the first 11 calls was within 1.2x
# of one thread's at 262144 x 4 in 3 runs of 4 (0 of 7 without the floor, 2.2x to 3.2x), and at
# 65536 x 10 in 3 of 6 (4 of 13 without), with the floor on the region's whole time; on what it
# lost, 7 of 8 runs (4 at each shape), as many as the whole time's in the same alternated runs.
LATE_TEAM_SERIAL_RATIO = 8
# A team loop's own time on one thread, as a yardstick for its team regions besides its fastest
# thread's processor time, which is not always what one thread would take: with one core spun
# by another process, a team thread that shared that core inflated both threads' processor time
# (8192 x 1000, 2-core AMD EPYC VM: regions of 7.8 ms against a one-thread call of 4.3, and the
# fastest thread's time per segment times all segments read 7.8), so no region counted late.
# Only a doubtful team is measured: one whose regions took more than TEAM_DOUBT times that
# fastest thread's time (on a quiet machine two threads took 0.5-0.6 of it at 65536 x 10,
# 8192 x 1000 and the long rows).  Measuring a team that gains clearly cost about 10% of the
# median of 11 fresh-gradient calls at 1024 x 131072 (one thread takes twice the team's time).
# A loop runs a shape on one thread after TEAM_SAMPLE_FIRST doubtful runs, then after twice as
# many each time, up to TEAM_SAMPLE_RUNS.  Not at once: the second call paid for its fresh
# gradient's first touch (9-10 ms against 4.4 at 8192 x 1000, busy).  A run on one thread raises
# the loop's time by at most TEAM_ALONE_RISE: the first run pays for first touch too, and any
# run may be preempted; runs on one thread that a busy machine causes raise it in a few calls.
TEAM_DOUBT = 0.8
TEAM_SAMPLE_FIRST = 3
TEAM_SAMPLE_RUNS = 64
TEAM_ALONE_RISE = 1.25
# Rows of at most this many classes are processed a segment at a time, one row per SIMD lane
# (a transposed tile of SEGMENT_ROWS rows): no per-row reductions, tails or calls.  Per row
# those cost about 120 ns (one thread, AMD EPYC, AVX2).  Against rows, one thread, alternating
# calls, the lanes were 2.9x faster at C = 33, 2x at 64, 1.4x at 129, 1.1x at 192 and even at
# 256 in float32; in float64 1.3x at 65, 1.04x at 80, even at 96 and 5% slower at 128.
SHORT_CLASSES = {"float32": 192, "float64": 80}
# Class counts whose element-loop transposes (without vector shuffles) get a case of their
# own, the count a constant; more classes take the general loop.
TRANSPOSE_CASES = 32
# Rows and classes per square of the transposes between a full segment and its tile, used from
# this many classes up: one 256-bit vector a row.  In float32 (AMD EPYC, AVX2) they ran 2.5x to
# 4.5x faster than gcc's code for the element loops at 8 <= C <= 32, which took a third of the
# kernel's time at C = 10.  128-bit squares below 8 classes made the kernel 4% slower at C = 4:
# the lane loops' wider loads then span two of their stores.  At half a vector's classes (4 in
# float32, 2 in float64) a vector's width of rows moves in whole vectors too (half_transpose):
# 6-7% faster at 262144 x 4 than gcc's code for the loop of that class count.  Above that, a
# strip of a vector's width of rows by half a vector's classes (strip_shuffles) moves what the
# squares leave where that is at most half a vector's classes, rather than a second, overlapping
# square, and two strips move fewer classes than a vector's width (SHORT_STRIPS).  Against the
# squares and element loops before them (one thread, three builds of each): in float32 11-21%
# faster at C = 5 to 7, 6-8% at 9 to 12 (two threads at 65536 x 10: 6-7%), level at C = 2, 4 and
# 13 to 32 within the 3% by which where the code lies moves them; in float64 2-3% faster at C = 5
# and 6, level elsewhere.
TRANSPOSE_LANES = {"float32": 8, "float64": 4}
# Choices that differ by type (one thread, AMD EPYC, AVX2).  The lanes take the target's logit
# by one gather a lane in float64 (4-5% faster at C = 4 and 10), by a select in each class's
# loop in float32 (the gather was 1.24x slower at C = 4).  Long rows prefetch their next chunk
# in float32 (3-16% faster from 300 classes up); in float64 that was 4-10% slower from 1000
# classes up.
# The lanes' exp loop is staged (see staged) in float64: 10% faster at C = 4 to 32; in float32
# it was level (0.99-1.0).
LANE_STAGED_EXP = {"float32": False, "float64": True}
LANE_TARGET_GATHER = {"float32": False, "float64": True}
ROW_PREFETCH = {"float32": True, "float64": False}
# Below a vector's width of classes two strips (strip_shuffles) move a segment in float32: 11-21%
# faster at C = 5 to 7 than the element loop of that class count; in float64 (C = 3) 3.4% slower.
SHORT_STRIPS = {"float32": True, "float64": False}

# Names the template itself declares before a group is evaluated.
_ELEMENT_INPUTS = {"logit", "transformed", "weight", "target_prob", "row_max", "num_classes",
                   "label_smoothing", "lse_square_scale", "softcap"}
_ROW_STATE = {"row_max", "top_count", "rest_sum", "weight_sum", "shifted_sum", "target_logit",
              "target_weight", "grad_scale", "num_classes", "label_smoothing",
              "lse_square_scale", "softcap"}

target_class_weight = sp.Symbol("target_class_weight", real=True)
linear_coefficient = sp.Symbol("linear_coefficient", real=True)


def _group(
    group: str,
    outputs: Sequence[tuple[str | sp.Symbol, sp.Expr]],
    printer: KernelCPrinter,
    prefix: str,
    inputs: Iterable[str],
) -> PrintedCode:
    printed = print_code(outputs, printer, temp_prefix=prefix)
    check_reads(f"C {group}", printed.assignments, inputs)
    return printed


def staged(group: PrintedCode, exp: str) -> dict | None:
    """A sweep group split at its one fast exp into two loops over a chunk: ``early`` (what the
    exp's argument needs, and whatever does not depend on the exp) with the exp's reduction,
    which leaves r and the bits of 2^(k+K) per element, then ``late``: the exp's polynomial, from
    those, and what depends on it.  Each loop's chain of dependent operations is then about half
    the exp's, and the loops waited on that chain (one thread, the same bits): 2-5% faster from
    1000 classes up in float32 and float64, 10% for the float64 lanes (LANE_STAGED_EXP).  None
    where the group has no such exp, or where the late part would read an element input (the
    early loop overwrites the logit in place)."""
    calls = [(name, re.fullmatch(rf"{exp}\((\w+)\)", code)) for name, code in group.assignments]
    calls = [(name, match.group(1)) for name, match in calls if match]
    if len(calls) != 1:
        return None
    exp_term, argument = calls[0]
    late_names = {exp_term}
    early, late = [], []
    for name, code in group.assignments:
        if name == exp_term:
            continue
        if names_read(code) & late_names:
            late_names.add(name)
            late.append((name, code))
        else:
            early.append((name, code))
    late_reads = {read for _, code in late for read in names_read(code)}
    if late_reads & (_ELEMENT_INPUTS | {name for name, _ in early}):
        return None
    return {"early": PrintedCode((), tuple(early), 0), "argument": argument,
            "exp_term": exp_term, "late": PrintedCode((), tuple(late), 0),
            "late_names": late_names}


def _variant(spec: ks.KernelSpec, dtype: str, fast: dict[str, str]) -> dict:
    # The softcap's tanh is the fast one everywhere: the maximum and the sweeps must see the
    # same transformed logits, and libm's tanh would keep every loop over them scalar.
    tanh = {"tanh": fast["tanh"]}
    exact = KernelCPrinter(dtype, function_names=tanh)
    # The row values' log1p (of top_excess + rest_sum >= 0) is the fast one: libm's log1pf
    # took 11% of the time at C = 256 (one thread) and kept the row's tail a call.
    row = KernelCPrinter(dtype, function_names={"log1p": fast["log1p"]} | tanh)
    sweep = KernelCPrinter(dtype, function_names={"exp": fast["exp"], "expm1": fast["expm1"]} | tanh)
    lanes = KernelCPrinter(dtype, function_names={"log": fast["log"]} | tanh)
    wide = KernelCPrinter("float64")
    index = spec.target_kind == "index"
    # In place the logits are gone once the exponentials are stored over them.
    stores = not ({ks.logit, ks.shifted} & spec.dlogit_from_stored.free_symbols)
    # A transform that is not the identity (the softcap's tanh) is evaluated once per element:
    # the maximum's loop keeps the transformed logits where the gradient goes, and the sweeps
    # read them there.
    keeps_transformed = spec.transform != ks.logit
    if keeps_transformed and stores:
        raise ValueError(f"{spec.name}: the transformed logits and the stored exponentials "
                         "would share the gradient's buffer")
    element_shifted = spec.shifted_from_transformed if keeps_transformed else spec.element_shifted
    element_dlogit = spec.dlogit_from_transformed if keeps_transformed else spec.dlogit
    sweep_terms = [
        (ks.shifted, element_shifted),
        (ks.exp_term, spec.exp_term),
        (linear_coefficient, spec.linear_coefficient),
        ("shifted_term", linear_coefficient * ks.shifted),
    ]
    split_terms = [*sweep_terms[:2], (ks.top_term, spec.top_term), ("rest_term", spec.rest_term)]
    unsplit_terms = [*sweep_terms[:2], (ks.top_term, spec.top_term_unsplit),
                     ("rest_term", spec.rest_term_unsplit)]
    row_value_names = {str(s) for s, _ in spec.row_values}

    def finishing(suffix: str, row_values, dlogit, dlogit_from_stored, dlogit_target) -> dict:
        """The groups read after the first sweep that depend on the call's options, named with
        ``suffix``: the row values of the lanes, their tail, and the two gradient sweeps."""
        return {
            # The row values of the lanes with the fast log, so that their loop vectorises (no
            # log1p there).  A finite row's sum_exp is in [1, C] (the maximum's term is
            # exp(0) = 1), a positive normal number; a non-finite row's is NaN, which passes
            # through.
            f"lanes_row{suffix}": _group(f"lanes_row{suffix}", list(row_values), lanes, "p",
                                         _ROW_STATE | {"sum_exp"}),
            # The lanes' row tail.  A row of the lanes is one chunk: its stored scale is
            # 1/sum_exp.  The lanes sum the other classes' terms in their exp loop (a select and
            # an add per element) instead of an expm1 per row.  One group, so that the two share
            # one division (the second took 8% of the time at C = 4, one thread).
            f"lanes_tail{suffix}": _group(
                f"lanes_tail{suffix}",
                ([(ks.stored_scale, spec.single_chunk_stored_scale)] if stores else [])
                + ([("dlogit_target", dlogit_target)] if index else []),
                sweep, "g", _ROW_STATE | {"sum_exp", "others_sum"} | row_value_names,
            ),
            f"second_sweep{suffix}": _group(
                f"second_sweep{suffix}",
                [(ks.shifted, element_shifted),
                 *(spec.from_transformed_steps if keeps_transformed else ()), (ks.dlogit, dlogit)],
                sweep, "d", _ELEMENT_INPUTS | {"grad_scale"} | row_value_names,
            ),
            # The gradient from the exponentials the first sweep stored.
            f"stored_sweep{suffix}": _group(
                f"stored_sweep{suffix}", [(ks.dlogit, dlogit_from_stored)] if stores else [],
                sweep, "e",
                (_ELEMENT_INPUTS - {"logit"}) | {"stored", "stored_scale", "grad_scale"} | row_value_names,
            ),
        }

    target_from_others = spec.dlogit_target_from_others if index else sp.Integer(0)
    # The same at PyTorch's defaults (no label smoothing, no z-loss), which the lanes take
    # wherever both are 0 (float32, one thread: 9-12% faster at C = 4, 4-5% at C = 10, 3-5% at
    # C = 16 and 32).
    default_values, default_gradients = ks.at_default_options(
        spec.row_values, element_dlogit, spec.dlogit_from_stored, target_from_others)
    groups = {
        **finishing("", spec.row_values, element_dlogit, spec.dlogit_from_stored, target_from_others),
        **finishing("_default", default_values, *default_gradients),
        "transform": _group("transform", [(ks.transformed, spec.transform)], exact, "m",
                            _ELEMENT_INPUTS),
        "first_sweep": _group("first_sweep", [*split_terms, *sweep_terms[2:]], sweep, "a",
                              _ELEMENT_INPUTS),
        # Without label smoothing nothing reads the linear sums (linear_optional).
        "first_sweep_exp": _group("first_sweep_exp", split_terms, sweep, "a", _ELEMENT_INPUTS),
        # Long stored chunks are summed whole, and only the maximum's chunk, where its sum is
        # close to 1, is split again from the stored terms: the split's two selects per element
        # took 8-10% of the time from 600 to 131072 classes (one thread).
        "first_sweep_unsplit": _group("first_sweep_unsplit", [*unsplit_terms, *sweep_terms[2:]],
                                      sweep, "a", _ELEMENT_INPUTS),
        "first_sweep_exp_unsplit": _group("first_sweep_exp_unsplit", unsplit_terms, sweep, "a",
                                          _ELEMENT_INPUTS),
        "resplit": _group("resplit", [(ks.top_term, spec.top_term_from_stored),
                                      ("rest_term", spec.rest_term_from_stored)] if stores else [],
                          exact, "s", {"stored"}),
        # The lanes sum exp_term itself: their sum_exp is rounded to the kernel's type before
        # the fast log anyway, and the split's two selects made them 20-35% slower at C = 4
        # and 10.
        "lanes_sweep": _group("lanes_sweep", sweep_terms, sweep, "a", _ELEMENT_INPUTS),
        "lanes_sweep_exp": _group("lanes_sweep_exp", sweep_terms[:2], sweep, "a", _ELEMENT_INPUTS),
        "rescale": _group(
            "rescale",
            [("rescaled_top_count", spec.rescale_top_count),
             ("rescaled_rest_sum", spec.rescale_rest_sum),
             ("rescaled_shifted_sum", spec.rescale_shifted_sum)],
            exact, "u", _ROW_STATE | {"old_max", "new_max"},
        ),
        "row": _group("row", list(spec.split_row_values), row, "r", _ROW_STATE),
        # Its own group: CSE across it and the row values would hoist reads of row values.
        # Its exponent target_shifted - log_sum_exp is <= 0 (sum_exp >= 1 holds the row
        # maximum's exp(0) = 1), in the fast expm1's domain.
        "target_gradient": _group(
            "target_gradient",
            [("dlogit_target", spec.dlogit_target)] if index else [],
            sweep, "g", _ROW_STATE | row_value_names,
        ),
        # The gradient from exp(transform - stored_max), stored by the first sweep.
        "stored_scale": _group(
            "stored_scale",
            [(ks.stored_shifted, spec.stored_shifted_value), (ks.stored_scale, spec.stored_scale_value)]
            if stores else [],
            sweep, "c",  # stored_shifted - log_sum_exp <= 0 too
            _ROW_STATE | {"stored_max"} | row_value_names,
        ),
        # The mean's denominator: each row's weight, from the target class's weight.
        "row_weight": _group(
            "row_weight",
            ([(ks.target_weight, spec.linear_coefficient.subs(ks.weight, target_class_weight))]
             if index else [])
            + [("row_weight", spec.row_weight)],
            exact, "w", {"target_class_weight"},
        ),
        # Reductions run in double whatever the kernel's type.
        "scales": _group("scales", [("scale_mean", spec.scale_mean), ("scale_sum", spec.scale_sum)],
                         wide, "s", {"grad_output", "denominator"}),
        "loss_mean": _group("loss_mean", [("loss_mean", spec.loss_mean)], wide, "l",
                            {"loss_total", "denominator"}),
        "mean_lse_square_scale": _group(
            "mean_lse_square_scale", [("mean_lse_square_scale", spec.mean_lse_square_scale)],
            wide, "z", {"lse_square_scale", "denominator", "counted_rows"}),
    }
    return {
        "name": spec.name,
        "target_kind": spec.target_kind,
        "weighted": spec.weighted,
        "softcapped": spec.softcapped,
        "stores": stores,
        "keeps_transformed": keeps_transformed,
        "linear_optional": ks.linear_sums_unused_without_smoothing(spec),
        # Every counted row weighs the same constant: the mean's denominator is their count
        # times it, and the target check sums no weights.
        "constant_row_weight": index and spec.row_weight.subs(
            ks.target_weight, spec.linear_coefficient.subs(ks.weight, target_class_weight)).is_number,
        "row_names": [str(symbol) for symbol, _ in spec.row_values],
        "groups": groups,
        # The long stored chunks' sums, in two loops (see staged).
        "staged": {name: staged(groups[name], fast["exp"])
                   for name in ("first_sweep_unsplit", "first_sweep_exp_unsplit")
                   + (("lanes_sweep", "lanes_sweep_exp") if LANE_STAGED_EXP[dtype] else ())},
        "op_count": sum(g.op_count for g in groups.values()),
    }


def printed_fast_exp(dtype: str) -> dict:
    """The proven fast exp of ``dtype``, printed for ``macros.c.j2``'s fast_exp_function."""
    approx = exp_approximation(dtype)
    verify_exp_approximation(approx)  # refuse to emit an exp whose error bound does not hold
    printer = KernelCPrinter(dtype)
    steps = tuple((str(name), print_expression(expr, printer)) for name, expr in approx.steps)
    check_reads("C fast_exp", steps, {"x", "scale"})
    # Printed as two functions, for loops staged at r (see staged): up to r, and from r on.
    reduced = [name for name, _ in steps].index("r") + 1
    check_reads("C fast_exp's reduction", steps[:reduced], {"x"})
    check_reads("C fast_exp's polynomial", steps[reduced:], {"r", "scale"})
    uint = f"uint{approx.bit_width}_t"
    return {
        "name": f"gs_exp_{SUFFIXES[dtype]}",
        "reduce_name": f"gs_exp_reduce_{SUFFIXES[dtype]}",
        "finish_name": f"gs_exp_finish_{SUFFIXES[dtype]}",
        "reduce_steps": steps[:reduced],
        "finish_steps": steps[reduced:],
        "uint": uint,
        "scale_bits_offset": f"UINT{approx.bit_width}_C({approx.scale_bits_offset})",
        "mantissa_bits": approx.mantissa_bits,
        "expressions": tuple(expr for _, expr in approx.steps),
        "op_count": sum(int(sp.count_ops(expr)) for _, expr in approx.steps),
    }


def _printed_steps(function: str, approx, printer: KernelCPrinter, inputs: set[str]) -> dict:
    """The steps of a fast function's approximation as C assignments, checked to read only
    ``inputs`` and earlier steps, with the expressions behind them."""
    steps = tuple((str(name), print_expression(expr, printer)) for name, expr in approx.steps)
    check_reads(f"C fast_{function}", steps, inputs)
    return {
        "steps": steps,
        "expressions": tuple(expr for _, expr in approx.steps),
        "op_count": sum(int(sp.count_ops(expr)) for _, expr in approx.steps),
    }


def _fast_log(dtype: str) -> dict:
    approx = log_approximation(dtype)
    verify_log_approximation(approx)  # refuse to emit a log whose error bound does not hold
    width = approx.bit_width
    return {
        "name": f"gs_log_{SUFFIXES[dtype]}",
        **_printed_steps("log", approx, KernelCPrinter(dtype), {"x", "exponent_shifted", "mantissa"}),
        "uint": f"uint{width}_t",
        "offset_bits": f"UINT{width}_C({approx.offset_bits})",
        "shifter_bits": f"UINT{width}_C({approx.shifter_bits})",
        "mantissa_base_bits": f"UINT{width}_C({approx.mantissa_base_bits})",
        "mantissa_mask": f"UINT{width}_C({approx.mantissa_mask})",
        "mantissa_bits": approx.mantissa_bits,
    }


def _fast_expm1(dtype: str, fast_exp: str) -> dict:
    approx = expm1_approximation(dtype)
    verify_expm1_approximation(approx)  # refuse to emit an expm1 whose error bound does not hold
    printer = KernelCPrinter(dtype, function_names={"exp": fast_exp})
    return {"name": f"gs_expm1_{SUFFIXES[dtype]}",
            **_printed_steps("expm1", approx, printer, {"x"})}


def _fast_log1p(dtype: str, fast_log: str) -> dict:
    approx = log1p_approximation(dtype)
    verify_log1p_approximation(approx)  # refuse to emit a log1p whose error bound does not hold
    printer = KernelCPrinter(dtype, function_names={"log": fast_log})
    return {"name": f"gs_log1p_{SUFFIXES[dtype]}",
            **_printed_steps("log1p", approx, printer, {"x"})}


def _fast_tanh(dtype: str) -> dict:
    approx = tanh_approximation(dtype)
    verify_tanh_approximation(approx)  # refuse to emit a tanh whose error bound does not hold
    working = approx.working_dtype
    printer = KernelCPrinter(working, function_names={"expm1": f"gs_expm1_{SUFFIXES[working]}"})
    return {"name": f"gs_tanh_{SUFFIXES[dtype]}", "working_real": C_TYPES[working],
            **_printed_steps("tanh", approx, printer, {"x"})}


# A stage's shuffle of one pair of vectors, (i, j, low, high): see _swap_stage.
Shuffle = tuple[int, int, tuple[int, ...], tuple[int, ...]]
Stage = tuple[Shuffle, ...]


def _swap_stage(lanes: int, vectors: int, vector_bit: int, element_bit: int) -> Stage:
    """One stage of shuffles over `vectors` vectors of `lanes` elements: each pair (i, i +
    vector_bit), bit `vector_bit` of i clear, swaps bit `element_bit` of the element index with
    bit `vector_bit` of the vector index.  Each entry is (i, i + vector_bit, low, high): the new
    vectors as `__builtin_shufflevector` indices into the pair (0 .. lanes - 1 from vector i)."""
    pairs = []
    for i in range(vectors):
        if i & vector_bit:
            continue
        low = tuple(m if not m & element_bit else lanes + m - element_bit for m in range(lanes))
        high = tuple(m + element_bit if not m & element_bit else lanes + m for m in range(lanes))
        pairs.append((i, i + vector_bit, low, high))
    return tuple(pairs)


def _check_lanes(lanes: int) -> None:
    if lanes < 2 or lanes & (lanes - 1):
        raise ValueError(f"lanes must be a power of two >= 2, got {lanes}")


def transpose_stages(lanes: int) -> tuple[Stage, ...]:
    """The shuffles that transpose a square of `lanes` vectors, `lanes` elements each.

    Stage h (1, 2, 4, ...) swaps bit h of the row and the column index of every element whose
    two bits differ (:func:`_swap_stage`); after every bit has been swapped, element (i, m) sits
    at (m, i).
    """
    _check_lanes(lanes)
    return tuple(_swap_stage(lanes, lanes, 1 << b, 1 << b) for b in range(lanes.bit_length() - 1))


def half_transpose(lanes: int) -> tuple[tuple[int, ...], tuple[Stage, ...]]:
    """The shuffles that take `lanes` rows of `lanes // 2` classes, stored back to back in
    `lanes // 2` vectors (two rows each), to one vector a class holding the rows in order.

    First each vector is permuted (the returned permutation) so that element 2c + p holds class c
    of its row of parity p; then stage b (0, 1, ...) swaps bit b + 1 of the element index with bit
    b of the vector index (:func:`_swap_stage`).  Each stage undoes itself, so the stages in
    reverse order and the inverse permutation go back.
    """
    _check_lanes(lanes)
    half = lanes // 2
    permutation = tuple((e & 1) * half + (e >> 1) for e in range(lanes))
    stages = tuple(_swap_stage(lanes, half, 1 << b, 1 << (b + 1))
                   for b in range(half.bit_length() - 1))
    return permutation, stages


def _half_transpose_context(lanes: int) -> dict:
    permutation, stages = half_transpose(lanes)
    inverse = tuple(permutation.index(e) for e in range(lanes))
    return {"permutation": permutation, "inverse": inverse, "stages": stages}


def _interleave_stage(lanes: int, vectors: int, group: int) -> Stage:
    """One stage of shuffles over `vectors` vectors of `lanes` elements: each pair (i, i + group),
    bit `group` of i clear, interleaves groups of `group` elements within each half of the
    vectors: low takes the first halves' groups of both (the 128-bit unpacklo / shufps pattern in
    float32, unpcklpd in float64), high the second halves'.  Entries as :func:`_swap_stage`'s."""
    half = lanes // 2
    low_starts = [h + s for h in (0, half) for s in range(0, half // 2, group)]
    high_starts = [start + half // 2 for start in low_starts]

    def interleave(starts: list[int]) -> tuple[int, ...]:
        order: list[int] = []
        for h in (0, half):
            for start in (s for s in starts if h <= s < h + half):
                order += [*range(start, start + group), *range(lanes + start, lanes + start + group)]
        return tuple(order)

    return tuple((i, i + group, interleave(low_starts), interleave(high_starts))
                 for i in range(vectors) if not i & group)


def strip_shuffles(lanes: int) -> tuple[tuple[Stage, ...], tuple[int, ...]]:
    """The shuffles of a strip: `lanes` rows of `lanes // 2` classes, from `lanes // 2` vectors of
    which vector k holds rows k and k + lanes // 2 (element e: class e mod lanes // 2), to one
    vector a class holding the rows in order; and where each class ends: class c in vector
    order[c].

    Each half of the vectors is a square of `lanes // 2` rows by `lanes // 2` classes, transposed
    by stages that interleave ever larger groups (:func:`_interleave_stage`): in float32 the 128-bit
    unpack and shufps patterns, 7-8% faster at C = 5 and 7 than stages that swap index bits, level
    at 10 and 12.  The same stages on one vector a class (class c in vector c) give the rows back,
    row k and row k + lanes // 2 in vector order[k]: a transpose undoes itself.
    """
    _check_lanes(lanes)
    half = lanes // 2
    bits = half.bit_length() - 1
    stages = tuple(_interleave_stage(lanes, half, 1 << b) for b in range(bits))
    # Each stage moves one bit of the class index into the vector index, the lowest first, to the
    # vector index's lowest free bit: class c ends in the vector of c's bits reversed.
    order = tuple(int(f"{c:0{bits}b}"[::-1], 2) if bits else 0 for c in range(half))
    return stages, order


def lane_context(dtype: str) -> dict:
    """What lanes.c.j2's tile transposes and a segment's lanes need of ``dtype``."""
    return {
        "dtype": dtype,
        "real": C_TYPES[dtype],
        "sfx": SUFFIXES[dtype],
        "lane_simdlen": LANE_SIMDLEN[dtype],
        "lane_int": LANE_INT[dtype],
        "short_classes": SHORT_CLASSES[dtype],
        "transpose_lanes": TRANSPOSE_LANES[dtype],
        "transpose_stages": transpose_stages(TRANSPOSE_LANES[dtype]),
        "half_transpose": _half_transpose_context(TRANSPOSE_LANES[dtype]),
        "strip": dict(zip(("stages", "order"), strip_shuffles(TRANSPOSE_LANES[dtype]))),
        "short_strips": SHORT_STRIPS[dtype],
    }


def printed_fast_functions(dtype: str) -> dict[str, dict]:
    """The proven fast exp, expm1, log and log1p of ``dtype``, printed for macros.c.j2."""
    fast_exp = printed_fast_exp(dtype)
    fast_log = _fast_log(dtype)
    return {"exp": fast_exp, "expm1": _fast_expm1(dtype, fast_exp["name"]), "log": fast_log,
            "log1p": _fast_log1p(dtype, fast_log["name"])}


def dtype_context(dtype: str) -> dict:
    functions = printed_fast_functions(dtype)
    fast_exp, fast_expm1 = functions["exp"], functions["expm1"]
    fast_log, fast_log1p = functions["log"], functions["log1p"]
    fast_tanh = _fast_tanh(dtype)
    fast = {"exp": fast_exp["name"], "expm1": fast_expm1["name"], "log": fast_log["name"],
            "log1p": fast_log1p["name"], "tanh": fast_tanh["name"]}
    variants = [_variant(spec, dtype, fast) for spec in ks.all_specs()]
    return {
        **lane_context(dtype),
        "short_simdlen": SHORT_SIMDLEN[dtype],
        # A row's maximum starts here rather than at -inf: see max_body in macros.c.j2.
        "lowest": "-FLT_MAX" if dtype == "float32" else "-DBL_MAX",
        "lane_target_gather": LANE_TARGET_GATHER[dtype],
        "row_prefetch": ROW_PREFETCH[dtype],
        "fast_exp": fast_exp,
        "fast_expm1": fast_expm1,
        "fast_log": fast_log,
        "fast_log1p": fast_log1p,
        "fast_tanh": fast_tanh,
        "variants": variants,
        "op_count": fast_exp["op_count"] + fast_expm1["op_count"] + fast_log["op_count"]
        + fast_log1p["op_count"] + fast_tanh["op_count"] + sum(v["op_count"] for v in variants),
    }


def team_context() -> dict:
    """The constants of macros.c.j2's team_functions and team_segments."""
    return {
        "parallel_min_elements": PARALLEL_MIN_ELEMENTS,
        "parallel_chunk_elements": PARALLEL_CHUNK_ELEMENTS,
        "late_team_serial_min": LATE_TEAM_SERIAL_MIN,
        "late_team_serial_max": LATE_TEAM_SERIAL_MAX,
        "late_regions": LATE_REGIONS,
        "late_team_serial_ratio": LATE_TEAM_SERIAL_RATIO,
        "team_doubt": TEAM_DOUBT,
        "team_sample_first": TEAM_SAMPLE_FIRST,
        "team_sample_runs": TEAM_SAMPLE_RUNS,
        "team_alone_rise": TEAM_ALONE_RISE,
    }


def kernel_context() -> dict:
    """Everything both C templates need: per dtype, the fast exp and the eight variants."""
    dtypes = [dtype_context(dtype) for dtype in DTYPES]
    expressions = [expr for spec in ks.all_specs() for expr in spec.expressions().values()]
    expressions += [expr for d in dtypes for expr in d["fast_exp"]["expressions"]]
    expressions += [expr for d in dtypes for expr in d["fast_expm1"]["expressions"]]
    expressions += [expr for d in dtypes for expr in d["fast_log"]["expressions"]]
    expressions += [expr for d in dtypes for expr in d["fast_log1p"]["expressions"]]
    expressions += [expr for d in dtypes for expr in d["fast_tanh"]["expressions"]]
    return {
        "dtypes": dtypes,
        "chunk": CHUNK,
        "stored_chunks": STORED_CHUNKS,
        "short_chunk": SHORT_CHUNK,
        "resplit_sum": RESPLIT_SUM,
        "row_block": ROW_BLOCK,
        "segment_rows": SEGMENT_ROWS,
        "transpose_cases": TRANSPOSE_CASES,
        "team": team_context(),
        "spec_hash": expression_hash(expressions),
        "op_count": sum(d["op_count"] for d in dtypes),
    }
