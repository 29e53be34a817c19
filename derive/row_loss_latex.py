"""The derivation of a row loss as a document: its definition, SymPy's derivative, the fitted
kernel shape and the kernel's row values, each claim with the method that checked it."""

from __future__ import annotations

import sympy as sp
from gradsmith.derive import row_loss as rl
from gradsmith.derive.latex import _LATEX_HEAD, FORMATS, escape_text
from gradsmith.derive.row_loss_proofs import prove


def _equations(pairs, fmt: str) -> str:
    if fmt == "md":
        return "".join(f"$${left} = {right}$$\n" for left, right in pairs)
    body = " \\\\\n".join(f"{left} &= {right}" for left, right in pairs)
    return r"\begin{align*}" + body + r"\end{align*}" + "\n"


def document(definition: rl.LossDefinition, fmt: str = "latex", losses=None) -> str:
    """The checked derivation of ``definition`` (``losses`` resolves names for its claims)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    claims = prove(definition, losses)
    fitted = rl.fit(definition)
    spec = rl.kernel_spec(definition)
    text = (lambda s: escape_text(s)) if fmt == "latex" else (lambda s: s)

    def section(title: str) -> str:
        return rf"\section*{{{text(title)}}}" + "\n" if fmt == "latex" else f"## {title}\n\n"

    options = ", ".join(f"{o.name} in {o.describe()}" for o in definition.options) or "none"
    parts = [_LATEX_HEAD if fmt == "latex" else f"# {definition.title}: the derivation\n\n"]
    parts.append(section(f"The {definition.title}"))
    parts.append(text(f"Options: {options}. Assumptions: {'; '.join(definition.assumptions)}. "
                      "Sums run over the classes 0..C-1 for a symbolic C.") + "\n")
    parts.append(_equations([("L", sp.latex(fitted.loss)),
                             (r"\frac{\partial L}{\partial z_j}", sp.latex(fitted.derivative))],
                            fmt))
    parts.append(section("Fitted to the kernel shape"))
    parts.append(text("dL/dz_j = coef_p p_j + coef_target [j = t] + coef_q q_j, with:") + "\n")
    parts.append(_equations([(sp.latex(s), sp.latex(e)) for s, e in fitted.coefficients.items()]
                            + [("L", sp.latex(fitted.row_loss))], fmt))
    parts.append(section("What the kernels evaluate"))
    values = spec.row_values + spec.element_values + ((sp.Symbol("dlogit"), spec.dlogit),)
    values += tuple((a.symbol, a.term) for a in spec.accumulators) + spec.final_values
    parts.append(_equations([(sp.latex(s), sp.latex(e)) for s, e in values], fmt))
    parts.append(section("Claims"))
    for claim in claims:
        parts.append(text(f"{claim.name}: holds ({claim.verdict.method}; "
                          f"{claim.verdict.detail}).") + "\n\n")
    if fmt == "latex":
        parts.append(r"\end{document}" + "\n")
    return "".join(parts)
