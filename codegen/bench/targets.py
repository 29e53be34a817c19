"""The performance targets, each a ratio between rows of one run, checked per shape."""

from __future__ import annotations

from typing import Any

# The peers the C kernel must lead by TARGET_LEAD: the fastest of them at each shape.
FAST_PEERS = ("torch-cpu", "torch-compile", "jax-jit")
TARGET_LEAD = 1.5
SHORT_ROW_CLASSES = 32  # rows this short must still reach SHORT_ROW_BANDWIDTH
SHORT_ROW_BANDWIDTH = 50.0
LONG_ROW_CLASSES = 32000  # rows this long, with out=, must reach OUT_BANDWIDTH
OUT_BANDWIDTH = 80.0
BUSY_SLOWDOWN = 1.2  # at most this times the one-thread time, one core busy
NUMPY_LEAD = 1.0  # the NumPy backend against textbook NumPy


def _cases(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    cases: dict[tuple, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "ok" and row["device"] == "cpu":
            cases.setdefault((tuple(row["shape"]), row["dtype"]), {})[row["name"]] = row
    return cases


def check_targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per (case, target) that this run measured: the ratio, the bound, met or not."""
    checks = []
    busy = report["settings"].get("busy", False)
    if report["settings"].get("softcap") is not None:
        # The targets are the plain loss's: the softcapped kernel takes a float64 tanh an
        # element (what its proven bound needs), by design not at the memory's speed.
        return checks
    for (shape, dtype), named in _cases(report["results"]).items():
        n_classes = shape[1]

        def add(target: str, value: float, bound: float, at_least: bool, shape=shape, dtype=dtype) -> None:
            met = value >= bound if at_least else value <= bound
            checks.append({"shape": list(shape), "dtype": dtype, "target": target, "value": value,
                           "bound": bound, "at_least": at_least, "met": met})

        kernel = named.get("c")
        single = named.get("c-1thread")
        if busy:
            # The other targets hold on a quiet machine: under load, a peer, the copy probe and
            # textbook NumPy share the taken core too, and their ratios say nothing of them.
            if kernel is not None and single is not None:
                add("c busy / c-1thread busy, x", kernel["ms"] / single["ms"], BUSY_SLOWDOWN, False)
            continue
        peers = [named[name] for name in FAST_PEERS if name in named]
        if kernel is not None and peers:
            fastest = min(peers, key=lambda row: row["ms"])
            add(f"c vs fastest peer ({fastest['name']}), x", fastest["ms"] / kernel["ms"], TARGET_LEAD, True)
        if kernel is not None and n_classes <= SHORT_ROW_CLASSES and kernel["pct_bandwidth"] is not None:
            add("c, % of copy bandwidth", kernel["pct_bandwidth"], SHORT_ROW_BANDWIDTH, True)
        out = named.get("c-out")
        if out is not None and n_classes >= LONG_ROW_CLASSES and out["pct_bandwidth"] is not None:
            add("c-out, % of copy bandwidth", out["pct_bandwidth"], OUT_BANDWIDTH, True)
        if "numpy" in named and "textbook" in named:
            add("numpy vs textbook, x", named["textbook"]["ms"] / named["numpy"]["ms"], NUMPY_LEAD, True)
    return checks


def _shown(value: float, bound: float, at_least: bool, met: bool) -> str:
    """``value`` to two decimals, or to as many more as it takes for the figure shown to stand
    on the same side of ``bound`` as the value itself: 1.4958 against ">= 1.5" reads 1.496, not
    1.50."""
    for digits in range(2, 8):
        text = f"{value:.{digits}f}"
        shown = float(text)
        if (shown >= bound if at_least else shown <= bound) == met:
            return text
    return repr(value)


def format_targets(checks: list[dict[str, Any]]) -> list[str]:
    if not checks:
        return []
    lines = ["targets (ratios within this run):"]
    width = max(len(check["target"]) for check in checks)
    for check in checks:
        shape = "x".join(str(side) for side in check["shape"])
        relation = ">=" if check["at_least"] else "<="
        lines.append(f"  {shape:<12} {check['dtype']:<8} {check['target']:<{width}}  "
                     f"{_shown(check['value'], check['bound'], check['at_least'], check['met']):>7}"
                     f"  {relation} {check['bound']:g}  "
                     f"{'met' if check['met'] else 'NOT MET'}")
    return lines
