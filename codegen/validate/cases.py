"""The fixed grid ``gradsmith validate`` runs: per kernel variant, shapes that reach each code
path (few classes in SIMD lanes, chunked long rows, several NumPy blocks) crossed with the
options (reductions, weights, ignore_index, label smoothing, z-loss, softcap, grad_output).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOFTCAP = 5.0
# Class indices whose gradient the long-row cases compare (the chunk edges of 512 and the
# ends); their index targets are drawn from the same set.
LONG_ROW_COLUMNS = (0, 1, 255, 511, 512, 599)


@dataclass(frozen=True)
class Variant:
    """One kernel variant: the target kind and whether class weights and softcap are on."""

    target_kind: str
    weighted: bool
    softcapped: bool

    @property
    def name(self) -> str:
        return (self.target_kind + ("_weighted" if self.weighted else "")
                + ("_softcap" if self.softcapped else ""))


VARIANTS = tuple(Variant(kind, weighted, softcapped) for kind in ("index", "probs")
                 for weighted in (False, True) for softcapped in (False, True))


@dataclass(frozen=True)
class Case:
    """One call of a variant: a shape, options, and how the result is compared.

    ``period`` repeats the first ``period`` rows (the reference evaluates each distinct row
    once); ``columns`` restricts the gradient compared to those classes; ``finite_differences``
    also checks the gradient against central differences of the float64 kernel's own loss.
    """

    variant: Variant
    label: str
    n_rows: int
    n_classes: int
    reduction: str = "mean"
    label_smoothing: float = 0.0
    lse_square_scale: float = 0.0
    ignore_index: int | None = None  # None: -100 with no ignored rows
    grad_output: str = "none"  # "none" (1), "scalar" or "rows"
    period: int | None = None
    columns: tuple[int, ...] | None = None
    finite_differences: bool = False


def variant_cases(variant: Variant) -> list[Case]:
    index = variant.target_kind == "index"
    ignored = -100 if index else None
    return [
        Case(variant, "5x7 mean", 5, 7, finite_differences=True),
        Case(variant, "5x7 none smoothing z-loss ignore grad", 5, 7, "none", 0.1, 1e-2,
             ignored, "rows", finite_differences=True),
        Case(variant, "5x7 sum smoothing ignore=2 grad", 5, 7, "sum", 0.05, 0.0,
             2 if index else None, "scalar", finite_differences=True),
        Case(variant, "37x19 lanes mean smoothing z-loss", 37, 19, "mean", 0.1, 1e-3, ignored,
             "scalar", period=11),
        Case(variant, "5x600 chunked none", 5, 600, "none", 0.1, 0.0, ignored, "rows",
             columns=LONG_ROW_COLUMNS),
        Case(variant, "450x600 blocks mean", 450, 600, "mean", 0.0, 1e-3, ignored, "scalar",
             period=7, columns=LONG_ROW_COLUMNS),
    ]


def grid(variants=VARIANTS) -> list[Case]:
    return [case for variant in variants for case in variant_cases(variant)]


def _single(values: np.ndarray) -> np.ndarray:
    return values.astype(np.float32).astype(np.float64)


def inputs(case: Case, seed: int = 20240531) -> tuple[np.ndarray, np.ndarray, dict]:
    """Logits, the target, and the call's options, as float64 arrays of float32 values (so
    that float32 and float64 kernels see the same numbers and share one reference)."""
    rng = np.random.default_rng([seed, case.n_rows, case.n_classes, len(case.label)])
    rows = case.period or case.n_rows
    classes = case.n_classes
    logits = _single(rng.normal(scale=3.0, size=(rows, classes)))
    if case.variant.target_kind == "index":
        choices = np.asarray(case.columns if case.columns else range(classes))
        target = choices[rng.integers(0, len(choices), size=rows)]
        if case.ignore_index is not None:
            target[1::4] = case.ignore_index
    else:
        target = _single(rng.dirichlet(np.full(classes, 0.5), size=rows))
    if case.period:
        repeats = -(-case.n_rows // rows)
        logits = np.tile(logits, (repeats, 1))[: case.n_rows]
        target = np.concatenate([target] * repeats)[: case.n_rows]
    options: dict = {"reduction": case.reduction, "label_smoothing": case.label_smoothing,
                     "lse_square_scale": case.lse_square_scale}
    if case.ignore_index is not None:
        options["ignore_index"] = case.ignore_index
    if case.variant.weighted:
        options["weight"] = _single(rng.uniform(0.25, 2.0, size=classes))
    if case.variant.softcapped:
        options["softcap"] = SOFTCAP
    if case.grad_output == "scalar":
        options["grad_output"] = np.float64(0.75)
    elif case.grad_output == "rows":
        options["grad_output"] = _single(rng.normal(size=case.n_rows))
    return logits, target, options
