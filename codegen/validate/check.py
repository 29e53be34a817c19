"""Run one backend's kernels over the grid and measure each result against the reference."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache

import numpy as np
from gradsmith.codegen.validate.cases import Case, inputs
from gradsmith.codegen.validate.reference import finite_difference_grad, reference_cross_entropy
from gradsmith.codegen.validate.tolerance import TOLERANCES, Tolerance, error_fraction

# Central differences of the float64 kernel (step 1e-6) are good to about 1e-9 relative.
FINITE_DIFFERENCE_TOLERANCE = Tolerance(rtol=1e-6, atol=1e-7)


@dataclass
class Outcome:
    """The worst error of one case as a fraction of its tolerance, and where it was."""

    case: Case
    fraction: float
    worst: str
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.fraction <= 1.0


@dataclass
class Row:
    """One line of the table: a backend, a dtype and a variant over their cases."""

    backend: str
    dtype: str
    variant: str
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: str | None = None

    @property
    def passed(self) -> bool:
        return self.skipped is None and all(o.passed for o in self.outcomes)

    @property
    def fraction(self) -> float:
        return max((o.fraction for o in self.outcomes), default=0.0)


def storage_dtype(dtype: str):
    if dtype == "bfloat16":
        import ml_dtypes  # CUDA's bfloat16 travels in ml_dtypes arrays on the host

        return ml_dtypes.bfloat16
    return np.dtype(dtype)


def _missing_host_type(dtype: str) -> str | None:
    if dtype != "bfloat16":
        return None
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        return "bfloat16 host arrays need ml_dtypes, which is not installed"
    return None


def _stored(values, dtype: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).astype(storage_dtype(dtype))
    return array if array.ndim == 0 else np.ascontiguousarray(array)


def stored_inputs(case: Case, dtype: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """The case's inputs rounded to ``dtype``, as the kernel receives them."""
    logits, target, options = inputs(case)
    options = dict(options)
    for name in ("weight", "grad_output"):
        if name in options:
            options[name] = _stored(options[name], dtype)
    if np.issubdtype(target.dtype, np.floating):
        target = _stored(target, dtype)
    return _stored(logits, dtype), np.ascontiguousarray(target), options


def _as_float64(options: dict) -> dict:
    return {k: np.asarray(v, dtype=np.float64) if isinstance(v, np.ndarray) else v
            for k, v in options.items()}


def reference(case: Case, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact ``(loss, dlogits, lse)`` on the inputs as stored in ``dtype``, computed once per
    case and stored values, whichever backends use it (the grid's inputs are float32 values, so
    float64 shares float32's)."""
    return _reference(case, "float32" if dtype == "float64" else dtype)


@cache
def _reference(case: Case, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    logits, target, options = stored_inputs(case, dtype)
    if np.issubdtype(target.dtype, np.floating):
        target = target.astype(np.float64)
    return reference_cross_entropy(logits.astype(np.float64), target, return_lse=True,
                                   columns=case.columns, **_as_float64(options))


def _host(array) -> np.ndarray:
    if hasattr(array, "get"):
        array = array.get()
    return np.asarray(array).astype(np.float64)


def _finite_difference_fraction(function: Callable, case: Case) -> float:
    logits, target, options = stored_inputs(case, "float64")
    upstream = options.pop("grad_output", None)
    weights = np.ones(case.n_rows) if upstream is None else np.broadcast_to(upstream, case.n_rows)

    def scalar_loss(z: np.ndarray) -> float:
        loss = _host(function(z, target, **options)[0])
        return float(np.sum(weights * loss)) if case.reduction == "none" else float(weights[0] * loss)

    gradient = _host(function(logits, target, grad_output=upstream, **options)[1])
    estimate = finite_difference_grad(scalar_loss, logits)
    return error_fraction(gradient, estimate, FINITE_DIFFERENCE_TOLERANCE)


def run_case(function: Callable, case: Case, dtype: str, fd_function: Callable | None) -> Outcome:
    """Call the kernel on the case and compare loss, dlogits and lse with the reference."""
    try:
        logits, target, options = stored_inputs(case, dtype)
        loss, dlogits, lse = (_host(x) for x in function(logits, target, return_lse=True,
                                                          **options))
        expected_loss, expected_dlogits, expected_lse = reference(case, dtype)
        tolerance = TOLERANCES[dtype]
        mask = None
        if case.columns is not None:
            mask = np.zeros(expected_dlogits.shape, dtype=bool)
            mask[:, list(case.columns)] = True
        fractions = {
            "loss": error_fraction(loss, expected_loss, tolerance),
            "dlogits": error_fraction(dlogits, expected_dlogits, tolerance, mask),
            "lse": error_fraction(lse, expected_lse, tolerance),
        }
        if case.finite_differences and fd_function is not None:
            fractions["finite differences"] = _finite_difference_fraction(fd_function, case)
    except Exception as error:  # noqa: BLE001 - a kernel that raises fails its case, named
        return Outcome(case, float("inf"), "call", f"{type(error).__name__}: {error}")
    worst = max(fractions, key=fractions.get)
    return Outcome(case, fractions[worst], worst)


def validate_backend(backend, cases: Iterable[Case], kernels, progress: Callable[[str], None]):
    """A :class:`Row` per (dtype, variant) of ``backend`` over ``cases``."""
    reason = backend.unavailable()
    if reason is not None:
        return [Row(backend.name, "-", "-", skipped=reason)]
    cases = list(cases)
    rows: list[Row] = []
    for dtype in backend.dtypes:
        missing = _missing_host_type(dtype)
        if missing is not None:
            rows.append(Row(backend.name, dtype, "-", skipped=missing))
            continue
        progress(f"validate: {backend.name} {dtype}: loading")
        try:
            function = backend.load(dtype, kernels)
        except Exception as error:  # noqa: BLE001 - a tree that fails to build fails its row
            row = Row(backend.name, dtype, "(load)")
            row.outcomes.append(Outcome(cases[0], float("inf"), "load",
                                        f"{type(error).__name__}: {error}"))
            rows.append(row)
            continue
        by_variant: dict[str, Row] = {}
        for number, case in enumerate(cases, 1):
            progress(f"validate: {backend.name} {dtype}: case {number}/{len(cases)} "
                     f"{case.variant.name} {case.label}")
            row = by_variant.setdefault(case.variant.name,
                                        Row(backend.name, dtype, case.variant.name))
            fd = function if dtype == "float64" else None
            row.outcomes.append(run_case(function, case, dtype, fd))
        rows.extend(by_variant.values())
    return rows
