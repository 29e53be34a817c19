"""The derivation as a document: LaTeX (amsmath ``align*``) or Markdown with ``$$`` math.

Every equality shown is a step of a checked :class:`~gradsmith.derive.steps.Derivation`; each line
carries its rule and the method that checked it (symbolic, or numeric at 40 digits).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sympy as sp
from gradsmith.derive import (
    concrete,
    fast_exp,
    gradient,
    linear,
    options,
    reductions,
    stability,
    vocab_parallel,
)
from gradsmith.derive.notation import LATEX_NAMES, i, p, softmax
from gradsmith.derive.steps import Derivation, Step

FORMATS = ("latex", "md")

# (section title, introduction, [(subsection title, derivation)]) in reading order.
Section = tuple[str, str, Sequence[tuple[str, Callable[[], Derivation]]]]


def _sections() -> list[Section]:
    return [
        ("The loss in a form to differentiate", "", [
            ("Rewriting the loss", gradient.loss_rewrite),
        ]),
        ("The gradient with respect to the logits", (
            "SymPy differentiates the rewritten loss; the Kronecker deltas collapse the sums."
        ), [
            ("Any target: no assumption", gradient.gradient_general),
            ("Targets that sum to one", gradient.gradient_sum_to_one),
        ]),
        ("An integer target t", "", [
            ("The loss -log p_t", gradient.index_loss_rewrite),
            ("Its gradient", gradient.gradient_index_target),
            ("Case i = t", lambda: gradient.index_target_cases()[0]),
            ("Case i != t", lambda: gradient.index_target_cases()[1]),
            ("The one-hot target sums to one", gradient.onehot_sums_to_one),
        ]),
        ("Vector form", (
            "Collecting the components (here for C = 3; gradsmith prove checks every C asked "
            "for): the gradient is p - y, and for an integer target y is the indicator "
            "vector e_t, so the gradient is p - e_t."
        ), [
            ("C = 3", lambda: concrete.gradient_sum_to_one(3)),
        ]),
        ("The softmax Jacobian", "", [("Jacobian", gradient.softmax_jacobian)]),
        ("A linear classifier z = W x + b", (
            "Proven for C = 3 classes, D = 2 features, N = 2 samples with explicit matrices; "
            "p stands for the softmax of W x + b."
        ), [
            ("Weights", lambda: linear.single_sample()[0]),
            ("Bias", lambda: linear.single_sample()[1]),
            ("Input", lambda: linear.single_sample()[2]),
            ("Mini-batch: the logits", lambda: linear.batch()[0]),
            ("Mini-batch: the weights", lambda: linear.batch()[1]),
            ("Mini-batch: the bias", lambda: linear.batch()[2]),
            ("From the per-logit gradient dZ", linear.verify_batch_parameter_gradients),
        ]),
        ("Numerical stability", "", [
            ("Shift invariance", stability.shift_invariance),
            ("The loss through log-sum-exp", stability.log_sum_exp_loss),
            ("The online normalizer", stability.online_normalizer),
            ("Merging two partial rows", stability.online_merge),
            ("exp through exp2", stability.exp2_rewrite),
        ]),
        ("The kernels' exponential", _exp_intro(), [
            ("Range reduction", stability.exp_range_reduction),
        ]),
        ("Options of cross_entropy", "", [
            ("Class weights", options.class_weights),
            ("Label smoothing", options.label_smoothing),
            ("Label smoothing with class weights", options.weighted_label_smoothing),
            ("Probability targets with weights and smoothing", options.weighted_probability_targets),
            ("z-loss", options.z_loss),
            ("Logit softcapping", options.softcapping),
        ]),
        ("Reductions and ignore_index", "", [
            ("mean, with an ignored row", reductions.mean_with_ignore_index),
            ("sum", reductions.sum_reduction),
            ("none, with grad_output", reductions.none_with_grad_output),
            ("mean, probability targets", reductions.mean_probability_targets),
        ]),
        ("A vocabulary split across ranks", (
            "Tensor-parallel training shards the classes; the statistics of the shards, summed "
            "at the all-reduced maximum, give the same loss and gradient as one process."
        ), [
            ("The loss from the merged statistics", vocab_parallel.merged_loss),
            ("The gradient from the merged statistics", vocab_parallel.merged_gradient),
        ]),
    ]


def _exp_intro() -> str:
    """The kernels' exp, with the degrees and error bounds that derive.fast_exp proves."""
    proven = []
    for dtype in ("float32", "float64"):
        approx = fast_exp.exp_approximation(dtype)
        bound = fast_exp.verify_exp_approximation(approx)
        proven.append(f"degree {approx.degree} and relative error at most "
                      f"{float(bound.relative):.3g} in {dtype}")
    return (
        "The C kernels evaluate e^x (x <= 0 once the row maximum is subtracted) without a "
        "library call, so that their loops vectorise: with r = x - k log 2 as below, e^r is a "
        "polynomial (the Taylor series economized with Chebyshev polynomials, one degree below "
        "the Taylor polynomial with the same bound), evaluated by Horner's rule in float32 and "
        "by Estrin's scheme ending in Horner's rule in float64, and 2^k is built from the "
        "exponent bits.  The "
        f"proof in derive/fast_exp.py, in exact rational arithmetic with the rounding of the "
        f"coefficients and of every operation included, gives {proven[0]}, and {proven[1]}."
    )


_TEXT_ESCAPES = {
    "\\": r"\textbackslash{}", "_": r"\_", "^": r"\^{}", "&": r"\&", "%": r"\%",
    "#": r"\#", "{": r"\{", "}": r"\}", "$": r"\$", "~": r"\~{}",
    "<": r"\textless{}", ">": r"\textgreater{}",
}


def escape_text(text: str) -> str:
    """Text for LaTeX's text mode."""
    return "".join(_TEXT_ESCAPES.get(char, char) for char in text)


def expression_latex(step: Step) -> str:
    if step.shown:
        return step.shown
    return sp.latex(step.expr, symbol_names=LATEX_NAMES)


def _how(step: Step) -> str:
    if step.verdict is None:
        return step.rule
    return f"{step.rule}; checked {step.verdict.method}"


def _assumption_lines(derivation: Derivation) -> list[str]:
    return [f"{a.name}: ${sp.latex(a.statement)}$" for a in derivation.assumptions]


def _definitions() -> list[tuple[str, str]]:
    """The definitions everything starts from (from gradsmith.derive.definitions)."""
    from gradsmith.derive.definitions import symbolic_classes

    classes = symbolic_classes()
    return [
        (r"p_i", sp.latex(softmax(i))),
        ("L", sp.latex(classes.loss.xreplace({softmax(classes.k): p[classes.k]}))),
    ]


def _rows(derivation: Derivation) -> list[tuple[str, str, Step]]:
    """(left side, "= right side", step) per line; a start that is its own left side is not
    written as an equality with itself."""
    rows = []
    for n, step in enumerate(derivation.steps):
        shown = expression_latex(step)
        if n == 0 and shown.strip() == derivation.lhs.strip():
            rows.append(("", shown, step))
        else:
            rows.append((derivation.lhs if n == 0 else "", f"= {shown}", step))
    return rows


def _latex_derivation(title: str, derivation: Derivation) -> str:
    lines = [rf"\subsection*{{{escape_text(title)}}}"]
    if derivation.intro:
        lines.append(escape_text(derivation.intro))
    lines.append(r"\begin{align*}")
    for n, (left, right, step) in enumerate(_rows(derivation)):
        end = r" \\" if n < len(derivation.steps) - 1 else ""
        lines.append(f"{left} &{right} "
                     rf"\tag*{{\footnotesize {escape_text(_how(step))}}}{end}")
    lines.append(r"\end{align*}")
    lines.append(r"\noindent Claim: \texttt{" + escape_text(derivation.name) + "}"
                 + rf" (C: {escape_text(str(derivation.classes))}, {derivation.method}).")
    assumptions = _assumption_lines(derivation)
    if assumptions:
        lines.append(r"Assumptions: " + "; ".join(escape_text(a.split(":")[0]) + ":"
                                                  + a.split(":", 1)[1] for a in assumptions) + ".")
    return "\n".join(lines) + "\n"


def _md_derivation(title: str, derivation: Derivation) -> str:
    lines = [f"### {title}", ""]
    if derivation.intro:
        lines += [derivation.intro, ""]
    for left, right, step in _rows(derivation):
        lines += [f"*{_how(step)}*", "", f"$${left} {right}$$", ""]
    lines.append(f"Claim: `{derivation.name}` (C: {derivation.classes}, {derivation.method}).")
    assumptions = _assumption_lines(derivation)
    if assumptions:
        lines.append("Assumptions: " + "; ".join(assumptions) + ".")
    return "\n".join(lines) + "\n"


def document(fmt: str = "latex") -> str:
    """The whole derivation, from the definitions to every option, as one document."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    render = _latex_derivation if fmt == "latex" else _md_derivation
    definitions = _definitions()
    intro = ("Logits z_0..z_{C-1}, a target y (probabilities, or an integer class t), the "
             "softmax p and the cross-entropy L. Every equality below was checked by SymPy "
             "before it was printed: symbolically where SymPy decides it, otherwise "
             "numerically with mpmath at 40 digits at random points for C in (1, 2, 3, 5, 8); "
             "each line says which.")
    parts = []
    if fmt == "latex":
        parts.append(_LATEX_HEAD)
        parts.append(r"\section*{Definitions}" + "\n" + escape_text(intro) + "\n")
        parts.append(r"\begin{align*}" + " \\\\\n".join(
            f"{name} &= {body}" for name, body in definitions) + r"\end{align*}" + "\n")
    else:
        parts.append("# Softmax cross-entropy: the derivation, step by step\n")
        parts.append("## Definitions\n\n" + intro + "\n")
        parts.extend(f"$${name} = {body}$$\n" for name, body in definitions)
    for title, section_intro, entries in _sections():
        if fmt == "latex":
            parts.append(rf"\section*{{{escape_text(title)}}}" + "\n"
                         + (escape_text(section_intro) + "\n" if section_intro else ""))
        else:
            parts.append(f"## {title}\n" + (f"\n{section_intro}\n" if section_intro else ""))
        for subtitle, build in entries:
            parts.append(render(subtitle, build()))
    if fmt == "latex":
        parts.append(r"\end{document}" + "\n")
    return "\n".join(parts)


_LATEX_HEAD = r"""\documentclass[10pt]{article}
\usepackage{amsmath}
\allowdisplaybreaks
\setlength{\textwidth}{16cm}
\setlength{\oddsidemargin}{0cm}
\setlength{\evensidemargin}{0cm}
\title{Softmax cross-entropy: the derivation, step by step}
\date{}
\begin{document}
\maketitle
"""
