"""Present a benchmark report: a text table, a JSON file, a PNG of throughput against C."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gradsmith.codegen.bench.targets import check_targets, format_targets
from gradsmith.codegen.bench.timing import WARMUP_MS

COLUMNS = ("shape", "dtype", "backend", "ms", "GB/s", "% BW", "peak MB")


def _peer_names(rows: list[dict[str, Any]]) -> list[str]:
    """Peers that some row was compared with, in table order."""
    compared = {name for row in rows for name in row.get("speedup", {})}
    return list(dict.fromkeys(row["name"] for row in rows if row["name"] in compared))


def _figure(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def _cells(row: dict[str, Any], peers: list[str]) -> list[str]:
    shape = "x".join(str(side) for side in row["shape"])
    pct = row.get("pct_bandwidth")
    cells = [
        shape,
        row["dtype"],
        row["name"],
        f"{row['ms']:.3f}",
        _figure(row["gb_per_s"]),
        "-" if pct is None else f"{pct:.0f}%",
        _figure(row["peak_bytes"] / 2**20),
    ]
    for peer in peers:
        ratio = row["speedup"].get(peer)
        cells.append("-" if ratio is None else f"{ratio:.2f}x")
    return cells


def _grid(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    left = {0, 1, 2}  # text columns; figures are right-aligned

    def line(cells: list[str]) -> str:
        parts = [c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return [line(header), rule, *(line(cells) for cells in body)]


def _not_run(rows: list[dict[str, Any]]) -> list[str]:
    """Skipped or failed contenders, one line per (contender, reason)."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    cases = {(tuple(r["shape"]), r["dtype"]) for r in rows}
    for row in rows:
        if row["status"] == "ok":
            continue
        key = (row["name"], row["status"], row["reason"] or "")
        groups.setdefault(key, []).append(f"{row['shape'][0]}x{row['shape'][1]} {row['dtype']}")
    lines = []
    for (name, status, reason), where in groups.items():
        scope = "every case" if len(where) == len(cases) else ", ".join(where)
        lines.append(f"  {name} {status} ({scope}): {reason}")
    return lines


def _warmup(calls: int) -> str:
    if calls == 0:
        return "no warm-up"
    return f"a warm-up of {calls} call{'s' if calls > 1 else ''} and at least {WARMUP_MS:g} ms"


def format_table(report: dict[str, Any]) -> str:
    machine, bandwidth = report["machine"], report["bandwidth"]
    rows = report["results"]
    lines = [
        (
            f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['threads']} threads; "
            f"GPU: {machine['gpu'] or 'none'}"
        ),
    ]
    for device, probe in bandwidth.items():
        if probe is None:
            continue
        series = probe.get("probes_gb_per_s", [])
        if len(series) > 1:
            lines.append(f"{device} copy bandwidth (read + write): {probe['gb_per_s']:.1f} GB/s, the median "
                         f"of {len(series)} probes ({min(series):.1f} to {max(series):.1f} GB/s), one before "
                         f"the first row and one after each host row ({probe['method']}); % BW is "
                         "against the higher probe beside its row")
        else:
            lines.append(f"{device} copy bandwidth (read + write): {probe['gb_per_s']:.1f} GB/s ({probe['method']})")
    load = machine.get("load_average")
    if load and load[0] > 0.5 * machine["cores"]:
        lines.append(f"note: 1-minute load average {load[0]:.1f} before the run, on {machine['cores']} cores; other work skews the timings")
    settings = report["settings"]
    lines.append(
        f"fused forward + backward, mean loss, integer targets; median of {settings['repeat']} "
        f"after {_warmup(settings['warmup'])}; GB/s counts the logits read, the gradient written "
        "and the targets read"
    )
    if settings.get("softcap") is not None:
        lines.append(f"softcap {settings['softcap']:g}: every contender softcaps the logits, "
                     "s tanh(z/s), before the softmax")
    if settings.get("busy"):
        lines.append("busy: another process kept one core busy throughout; c-1thread is the C kernel "
                     "on one OpenMP thread")
    done = [row for row in rows if row["status"] == "ok"]
    peers = _peer_names(done)
    header = list(COLUMNS) + [f"vs {peer}" for peer in peers]
    lines.append("")
    lines.extend(_grid(header, [_cells(row, peers) for row in done]) if done else ["(nothing ran)"])
    targets = format_targets(check_targets(report))
    if targets:
        lines.extend(["", *targets])
    not_run = _not_run(rows)
    if not_run:
        lines.extend(["", "not run:", *not_run])
    methods = sorted({row["memory_method"] for row in done})
    if methods:
        lines.append("")
        lines.append("peak MB: extra memory during one call, outputs included; " + "; ".join(methods))
    if report.get("torch_overhead"):
        from gradsmith.codegen.bench.torch_peer import format_overhead

        lines.extend(format_overhead(report["torch_overhead"]))
    return "\n".join(lines)


def write_json(report: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")


def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as error:
        raise ValueError("--plot needs matplotlib: pip install 'gradsmith[plot]'") from error


def write_plot(report: dict[str, Any], path: Path) -> None:
    """Milliseconds per shape (log scale), one bar per contender and dtype."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    done = [row for row in report["results"] if row["status"] == "ok"]
    cases = list(dict.fromkeys((tuple(row["shape"]), row["dtype"]) for row in done))
    names = list(dict.fromkeys(row["name"] for row in done))
    ms = {((tuple(row["shape"]), row["dtype"]), row["name"]): row["ms"] for row in done}
    figure, axes = pyplot.subplots(figsize=(max(8, 1.6 * len(cases)), 5))
    width = 0.8 / max(len(names), 1)
    for k, name in enumerate(names):
        points = [(i, ms[(case, name)]) for i, case in enumerate(cases) if (case, name) in ms]
        axes.bar([i - 0.4 + (k + 0.5) * width for i, _ in points], [value for _, value in points],
                 width=width, label=name)
    axes.set_xticks(range(len(cases)))
    axes.set_xticklabels([f"{n}x{c}\n{dtype}" for (n, c), dtype in cases])
    axes.set_yscale("log")
    axes.set_ylabel("milliseconds per forward + backward (median)")
    machine = report["machine"]
    title = machine["cpu"] if not machine["gpu"] else f"{machine['cpu']} / {machine['gpu']}"
    busy = ", one core busy" if report["settings"].get("busy") else ""
    axes.set_title(f"softmax cross-entropy: {title}, {machine['cores']} cores{busy}")
    axes.grid(True, axis="y", which="both", alpha=0.3)
    axes.legend(fontsize="small", ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
