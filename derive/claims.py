"""The registry of claims that ``gradsmith prove`` checks, and running them.

A claim names a function that builds (and so checks) a derivation, or verifies a kernel
spec.  Claims are listed by name so that they can run in worker processes.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass

from gradsmith.derive.check import ProofError
from gradsmith.derive.definitions import validate_num_classes
from gradsmith.derive.losses import LOSSES

SYMBOLIC_GROUP = "symbolic C"

# (group, module, [function or (function, index)]) in reading order.
_FIXED = (
    (SYMBOLIC_GROUP, "gradsmith.derive.gradient", (
        "loss_rewrite", "gradient_general", "gradient_sum_to_one", "index_loss_rewrite",
        "gradient_index_target", ("index_target_cases", 0), ("index_target_cases", 1),
        "onehot_sums_to_one", "softmax_jacobian",
    )),
    ("stability", "gradsmith.derive.stability", (
        "shift_invariance", "log_sum_exp_loss", "online_normalizer", "online_merge",
        "exp2_rewrite", "exp_range_reduction",
    )),
    ("options", "gradsmith.derive.options", (
        "class_weights", "label_smoothing", "weighted_label_smoothing",
        "weighted_probability_targets", "z_loss", "softcapping",
    )),
    ("reductions", "gradsmith.derive.reductions", (
        "mean_with_ignore_index", "sum_reduction", "none_with_grad_output",
        "mean_probability_targets",
    )),
    ("linear classifier", "gradsmith.derive.linear", (
        ("single_sample", 0), ("single_sample", 1), ("single_sample", 2),
        ("batch", 0), ("batch", 1), ("batch", 2), "verify_batch_parameter_gradients",
    )),
    ("vocab parallel", "gradsmith.derive.vocab_parallel", ("merged_loss", "merged_gradient")),
)
_CONCRETE = (
    "gradient_general", "gradient_sum_to_one", "gradient_index_target", "softmax_jacobian",
)
SPEC_COUNT = 8
EXP_DTYPES = ("float32", "float64")
_INDEPENDENT = ("stability", "options")


@dataclass(frozen=True)
class Claim:
    """One entry of the registry: ``function(*args)`` (or its ``[index]``) builds it."""

    group: str
    module: str
    function: str
    args: tuple = ()
    index: int | None = None
    kind: str = "derivation"  # or "kernel spec", "row loss", "<fast function> bound"
    task: str = ""  # claims of one task share cached steps, so they run in one process


@dataclass(frozen=True)
class ClaimResult:
    name: str
    classes: str
    group: str
    method: str
    result: str  # "holds" or "fails"
    seconds: float
    assumptions: tuple[str, ...] = ()
    detail: str = ""

    @property
    def holds(self) -> bool:
        return self.result == "holds"

    def as_dict(self) -> dict:
        return asdict(self)


def parse_classes(text: str) -> tuple[int, ...]:
    """Parse ``"1..16"``, ``"3,5,8"`` or a mix (``"1..4,8"``) into sorted class counts."""
    counts: set[int] = set()
    for item in str(text).split(","):
        item = item.strip()
        match = re.fullmatch(r"(\d+)\s*\.\.\s*(\d+)", item)
        if match:
            low, high = int(match[1]), int(match[2])
            if low > high:
                raise ValueError(f"--classes: empty range {item!r}; write LOW..HIGH with LOW <= HIGH")
            values = range(low, high + 1)
        elif re.fullmatch(r"\d+", item):
            values = [int(item)]
        else:
            raise ValueError(f"--classes: {item!r} is not a number or a range like 1..16 or 3,5,8")
        for value in values:
            try:
                counts.add(validate_num_classes(value))
            except ValueError as error:
                raise ValueError(f"--classes: {error}") from None
    return tuple(sorted(counts))


def _call(module: str, function: str, args: tuple):
    return getattr(importlib.import_module(module), function)(*args)


def registry(class_counts: Iterable[int]) -> list[Claim]:
    """Every claim, in reading order: symbolic C, identities, options, per-C sets, specs."""
    claims: list[Claim] = []
    for group, module, entries in _FIXED:
        for entry in entries:
            function, index = entry if isinstance(entry, tuple) else (entry, None)
            task = function if group in _INDEPENDENT else group
            claims.append(Claim(group, module, function, (), index, task=task))
    for classes in class_counts:
        claims.extend(
            Claim(f"C = {classes}", "gradsmith.derive.concrete", function, (classes,), task=f"C={classes}")
            for function in _CONCRETE
        )
    claims.extend(
        Claim("kernel specs", "gradsmith.derive.kernel_spec", "all_specs", (), index, kind="kernel spec",
              task=f"spec {index}")
        for index in range(SPEC_COUNT)
    )
    claims.extend(loss_claim(name) for name in LOSSES)
    claims.extend(
        Claim(f"kernel {function}", f"gradsmith.derive.fast_{function}", f"{function}_approximation",
              (dtype,), kind=f"{function} bound", task=f"{function} {dtype}")
        for function in _FAST_FUNCTIONS for dtype in EXP_DTYPES
    )
    return claims


def loss_claim(loss: str) -> Claim:
    """Every claim of one row loss (a registered name or a module path), as one entry."""
    return Claim("row losses", "gradsmith.derive.row_loss_proofs", str(loss), kind="row loss",
                 task=f"loss {loss}")


def loss_results(loss: str) -> list[ClaimResult]:
    """Each claim of one row loss as its own result (``gradsmith prove --loss NAME``)."""
    from gradsmith.derive.losses import definition
    from gradsmith.derive.row_loss_proofs import prove

    start = time.perf_counter()
    found = definition(loss)
    checked = prove(found, definition)
    seconds = (time.perf_counter() - start) / max(len(checked), 1)
    return [ClaimResult(c.name, "symbolic", f"loss {found.name}", c.verdict.method, "holds",
                        seconds, found.assumptions, c.verdict.detail) for c in checked]


def _run_loss(claim: Claim, start: float) -> ClaimResult:
    from gradsmith.derive.losses import definition
    from gradsmith.derive.row_loss import RowLossError
    from gradsmith.derive.row_loss_proofs import prove

    try:
        found = definition(claim.function)
        checked = prove(found, definition)
    except (ProofError, RowLossError) as error:
        return ClaimResult(f"loss {claim.function}", "symbolic", claim.group, "-", "fails",
                           time.perf_counter() - start, detail=str(error))
    methods = {c.verdict.method for c in checked}
    return ClaimResult(
        name=f"loss {found.name}: kernel spec, closed form and identities", classes="symbolic",
        group=claim.group, method="numeric" if "numeric" in methods else "symbolic",
        result="holds", seconds=time.perf_counter() - start,
        assumptions=found.assumptions, detail="; ".join(c.name for c in checked),
    )


def run_claim(claim: Claim) -> ClaimResult:
    """Build or verify one claim; a failing step becomes a result that says which."""
    start = time.perf_counter()
    if claim.kind == "row loss":
        return _run_loss(claim, start)
    try:
        if claim.kind == "kernel spec":
            return _run_spec(claim, start)
        if claim.kind.removesuffix(" bound") in _FAST_FUNCTIONS:
            return _run_function_bound(claim, start)
        derivation = _call(claim.module, claim.function, claim.args)
        if claim.index is not None:
            derivation = derivation[claim.index]
    except ProofError as error:
        name = claim.function + (f"[{claim.index}]" if claim.index is not None else "")
        return ClaimResult(name, _classes_of(claim), claim.group, "-", "fails",
                           time.perf_counter() - start, detail=str(error))
    return ClaimResult(
        name=derivation.name,
        classes=str(derivation.classes),
        group=claim.group,
        method=derivation.method,
        result="holds",
        seconds=time.perf_counter() - start,
        assumptions=tuple(str(a) for a in derivation.assumptions),
        detail=f"{len(derivation.steps) - 1} checked steps",
    )


def _classes_of(claim: Claim) -> str:
    if claim.kind.endswith(" bound") or claim.kind == "row loss":
        return "-"
    return str(claim.args[0]) if claim.args else "symbolic"


# The C kernels' fast functions: where each bound holds, and the form of each.
_FAST_FUNCTIONS = {
    "exp": ("x <= 0", "range reduction and an economized Taylor polynomial"),
    "log": ("positive normals", "the exponent from the bits, an odd polynomial in s = (m-1)/(m+1)"),
    "log1p": ("x >= 0", "the fast log of u = 1 + x times x/(u - 1), x where u rounds to 1"),
    "expm1": ("x <= 1/2", "x Q(x) for |x| <= 1/2, the fast exp minus 1 below"),
    "tanh": ("every real x", "-E/(E + 2), E = expm1(-2|x|), in float64"),
}


def _run_function_bound(claim: Claim, start: float) -> ClaimResult:
    """A fast function: its identities and its error bound, proven in exact arithmetic."""
    function, dtype = claim.kind.removesuffix(" bound"), claim.args[0]
    domain, form = _FAST_FUNCTIONS[function]
    module = importlib.import_module(claim.module)
    approx = getattr(module, f"{function}_approximation")(dtype)
    bound = getattr(module, f"verify_{function}_approximation")(approx)
    methods = {verdict.method for _, verdict in bound.verdicts}
    return ClaimResult(
        name=f"{dtype} {function}: relative error <= {float(bound.relative):.3g} on {domain}",
        classes="-", group=claim.group, method="numeric" if "numeric" in methods else "symbolic",
        result="holds", seconds=time.perf_counter() - start,
        detail=f"{form}; {len(bound.verdicts)} identities checked, remainder and rounding bounded "
        "in exact rational arithmetic",
    )


def _run_spec(claim: Claim, start: float) -> ClaimResult:
    from gradsmith.derive.kernel_spec import all_specs, verify_spec

    spec = all_specs()[claim.index]
    name = f"kernel spec {spec.name}"
    try:
        checks = verify_spec(spec)
    except ProofError as error:
        return ClaimResult(name, "3", claim.group, "-", "fails", time.perf_counter() - start,
                           detail=str(error))
    methods = {verdict.method for _, verdict in checks}
    return ClaimResult(
        name=name, classes="3", group=claim.group,
        method="numeric" if "numeric" in methods else "symbolic", result="holds",
        seconds=time.perf_counter() - start, detail=f"{len(checks)} checks against the definition",
    )


def run_claims(
    claims: list[Claim],
    *,
    jobs: int = 1,
    progress: Callable[[int, int, ClaimResult], None] | None = None,
) -> list[ClaimResult]:
    """Run every claim (in ``jobs`` worker processes when > 1); results in registry order."""
    results: dict[int, ClaimResult] = {}
    for done, (position, result) in enumerate(_results(claims, jobs), start=1):
        results[position] = result
        if progress is not None:
            progress(done, len(claims), result)
    return [results[position] for position in range(len(claims))]


def _run_task(claims: list[Claim]) -> list[ClaimResult]:
    return [run_claim(claim) for claim in claims]


def _tasks(claims: list[Claim]) -> list[list[int]]:
    """Positions grouped by task, largest explicit C first so no worker ends on the longest."""
    tasks: dict[str, list[int]] = {}
    for position, claim in enumerate(claims):
        tasks.setdefault(claim.task or f"#{position}", []).append(position)

    def size(positions: list[int]) -> int:
        claim = claims[positions[0]]
        return -int(claim.args[0]) if claim.args and claim.kind == "derivation" else 0

    return sorted(tasks.values(), key=size)


def _results(claims: list[Claim], jobs: int) -> Iterator[tuple[int, ClaimResult]]:
    if jobs <= 1:
        for position, claim in enumerate(claims):
            yield position, run_claim(claim)
        return
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = {
            pool.submit(_run_task, [claims[n] for n in positions]): positions
            for positions in _tasks(claims)
        }
        for future in as_completed(futures):
            yield from zip(futures[future], future.result(), strict=True)
