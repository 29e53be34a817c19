"""``gradsmith bench``: a tiny run reports every field, bad options fail in one line.

No timing is asserted: only that the command runs, what it reports, and that every contender
computed the same loss.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics
import time

import numpy as np
import pytest
from gradsmith.codegen.bench.peers import textbook_cross_entropy
from gradsmith.codegen.bench.probe import HostProbe
from gradsmith.codegen.bench.report import COLUMNS
from gradsmith.codegen.bench.runner import moved_bytes
from gradsmith.codegen.bench.settings import CPU_SHAPES, GPU_SHAPES, Case, build_cases, parse_shapes
from gradsmith.codegen.bench.timing import WARMUP_MS, HostClock, measure
from gradsmith.codegen.cli import main

# The compiling peers (torch.compile, jax.jit) take seconds to compile: not in the tiny run.
TINY = ["--shapes", "64x10,8x300", "--repeat", "1", "--inplace", "--no-progress",
        "--backends", "numpy,c,cuda,torch,gradsmith.torch,textbook"]
ROW_FIELDS = {
    "shape", "dtype", "name", "backend", "device", "generated", "status", "reason", "ms",
    "times_ms", "gb_per_s", "probe_gb_per_s", "pct_bandwidth", "peak_bytes", "memory_method",
    "loss", "speedup",
}  # fmt: skip


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    path = folder / "bench.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = main(["bench", *TINY, "--json", str(path)])
    assert status == 0
    return stdout.getvalue(), json.loads(path.read_text())


def test_tiny_run_prints_the_table(tiny_report):
    table, report = tiny_report
    header = next(line for line in table.splitlines() if line.startswith("shape"))
    for column in COLUMNS:
        assert column in header
    assert "vs textbook" in header
    assert report["machine"]["cpu"] in table
    assert "copy bandwidth (read + write)" in table
    assert "64x10" in table and "8x300" in table


def test_tiny_run_reports_every_field(tiny_report):
    _, report = tiny_report
    assert report["machine"]["cores"] >= 1
    assert report["settings"]["repeat"] == 1
    assert report["bandwidth"]["cpu"]["gb_per_s"] > 0
    rows = report["results"]
    assert {(tuple(r["shape"]), r["name"]) for r in rows} >= {((64, 10), "textbook"), ((8, 300), "textbook")}
    for row in rows:
        assert row["status"] in ("ok", "skipped"), row  # a contender that fails is a bug
        if row["status"] == "skipped":
            assert row["reason"]
            continue
        assert set(row) == ROW_FIELDS
        assert len(row["times_ms"]) == 1 and row["ms"] > 0
        case = Case(*row["shape"], row["dtype"])
        assert math.isclose(row["gb_per_s"], moved_bytes(case) / (row["ms"] * 1e6))
        assert math.isclose(row["pct_bandwidth"], 100 * row["gb_per_s"] / row["probe_gb_per_s"])
        if row["name"] in ("numpy", "c", "textbook"):  # each call allocates a fresh dlogits
            itemsize = 4 if row["dtype"] == "float32" else 8
            assert row["peak_bytes"] >= case.n_rows * case.n_classes * itemsize, row


def test_each_host_row_is_scored_against_the_higher_probe_beside_it(tiny_report):
    table, report = tiny_report
    probe = report["bandwidth"]["cpu"]
    series = probe["probes_gb_per_s"]
    host_rows = [r for r in report["results"] if r["device"] == "cpu" and r["status"] == "ok"]
    assert len(host_rows) >= 8
    assert len(series) == 1 + len(host_rows)  # before the first row, after each host row
    assert probe["gb_per_s"] == statistics.median(series)
    assert len(probe["samples_gb_per_s"]) == len(series) * 7
    for index, row in enumerate(host_rows):
        assert row["probe_gb_per_s"] == max(series[index], series[index + 1]), row["name"]
    assert f"of {len(series)} probes ({min(series):.1f} to {max(series):.1f} GB/s)" in table
    assert "one after each host row" in table


def test_every_contender_computes_the_same_loss(tiny_report):
    _, report = tiny_report
    by_shape: dict[tuple, dict[str, float]] = {}
    for row in report["results"]:
        if row["status"] == "ok":
            by_shape.setdefault(tuple(row["shape"]), {})[row["name"]] = row["loss"]
    for shape, losses in by_shape.items():
        expected = losses["textbook"]
        for name, loss in losses.items():
            assert loss == pytest.approx(expected, rel=1e-5), (shape, name)


def test_speedups_compare_with_peers_on_the_same_device(tiny_report):
    _, report = tiny_report
    rows = [r for r in report["results"] if r["status"] == "ok"]
    for row in rows:
        peers = {r["name"]: r for r in rows if r["shape"] == row["shape"] and not r["generated"]}
        expected = {name for name, peer in peers.items() if name != row["name"] and peer["device"] == row["device"]}
        assert set(row["speedup"]) == expected
        for name, ratio in row["speedup"].items():
            assert math.isclose(ratio, peers[name]["ms"] / row["ms"])


def test_torch_op_is_a_contender_with_its_overhead(tiny_report):
    pytest.importorskip("torch")
    table, report = tiny_report
    names = {r["name"] for r in report["results"] if r["status"] == "ok"}
    assert "gradsmith.torch" in names
    overhead = report["torch_overhead"]
    assert [row["shape"] for row in overhead] == ["64x10", "256x100", "1024x1000"]
    for row in overhead:
        assert row["op_us"] > 0 and row["raw_c_us"] > 0 and row["torch_us"] > 0
        assert math.isclose(row["overhead_us"], row["op_us"] - row["raw_c_us"])
        line = next(text for text in table.splitlines() if text.strip().startswith(row["shape"] + ":"))
        assert f"F.cross_entropy {row['torch_us']:8.1f}" in line
    assert "gradsmith.torch per-call overhead" in table


def test_textbook_matches_a_float64_computation():
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((7, 5)) * 3
    target = rng.integers(0, 5, size=7)
    loss, grad = textbook_cross_entropy(logits, target)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    assert loss == pytest.approx(-log_probs[np.arange(7), target].mean(), rel=1e-12)
    expected = np.exp(log_probs)
    expected[np.arange(7), target] -= 1
    np.testing.assert_allclose(grad, expected / 7, rtol=1e-12, atol=1e-15)


def test_copy_probe_reports_a_rate():
    host = HostProbe(threads=2, repeat=2, buffer_bytes=2**20)
    for probe in (host.measure(), host.measure()):  # one set of buffers, probed again and again
        assert probe.gb_per_s > 0 and len(probe.samples_gb_per_s) == 2
        assert probe.buffer_bytes == 2**20


def test_default_plan():
    cpu = build_cases(None, None, gpu=False)
    assert [(c.n_rows, c.n_classes, c.dtype) for c in cpu] == [(n, c, "float32") for n, c in CPU_SHAPES]
    gpu = build_cases(None, None, gpu=True)
    extra = [(c.n_rows, c.n_classes, c.dtype) for c in gpu if c.gpu_only]
    assert extra == [(n, c, d) for n, c in GPU_SHAPES for d in ("float32", "bfloat16")]
    assert parse_shapes(" 4096x32000, 65536X10") == ((4096, 32000), (65536, 10))


def test_plot_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    assert main(["bench", "--shapes", "8x10", "--backends", "textbook", "--repeat", "1", "--plot", str(path)]) == 0
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--shapes", "4096by10"], "--shapes"),
        (["--shapes", "0x10"], "--shapes"),
        (["--shapes", ""], "--shapes"),
        (["--backends", "numpy,tensorflow"], "tensorflow"),
        (["--dtypes", "int8"], "--dtypes"),
        (["--repeat", "0"], "--repeat"),
        (["--repeat", "two"], "--repeat"),
        (["--threads", "0"], "--threads"),
        (["--json", "/nonexistent-folder/x.json"], "nonexistent-folder"),
        (["--softcap", "0"], "--softcap"),
        (["--softcap", "inf"], "--softcap"),
        (["--softcap", "30", "--loss", "focal"], "--softcap"),
    ],
)
def test_bad_arguments_fail_in_one_line(argv, needle, capsys):
    assert main(["bench", *argv]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], captured.err
    assert captured.out == ""


def test_busy_core_is_stopped_on_errors():
    from gradsmith.codegen.bench.busy import busy_core

    with pytest.raises(RuntimeError), busy_core() as spinner:
        assert spinner.poll() is None  # running
        raise RuntimeError("the benchmark failed")
    assert spinner.poll() is not None


def test_openmp_threads_restores_the_setting():
    from gradsmith.codegen.bench import machine

    runtimes = machine._openmp_runtimes()
    if not runtimes:
        pytest.skip("no OpenMP runtime found")
    before = runtimes[0].omp_get_max_threads()
    with machine.openmp_threads(1):
        assert runtimes[0].omp_get_max_threads() == 1
    assert runtimes[0].omp_get_max_threads() == before


def _row(name, ms, n_classes=10, pct=None, generated=True):
    return {"shape": [100, n_classes], "dtype": "float32", "name": name, "status": "ok",
            "device": "cpu", "ms": ms, "pct_bandwidth": pct, "generated": generated}


def test_targets_are_ratios_within_the_run():
    from gradsmith.codegen.bench.targets import check_targets

    rows = [_row("c", 2.0, pct=60.0), _row("c-1thread", 1.0), _row("numpy", 4.0),
            _row("torch-cpu", 9.0, generated=False), _row("jax-jit", 3.0, generated=False),
            _row("textbook", 2.0, generated=False)]
    checks = {c["target"]: c for c in check_targets({"settings": {"busy": False}, "results": rows})}
    lead = checks["c vs fastest peer (jax-jit), x"]
    assert lead["value"] == pytest.approx(1.5) and lead["met"]
    assert checks["c, % of copy bandwidth"]["met"]
    numpy_lead = checks["numpy vs textbook, x"]
    assert numpy_lead["value"] == pytest.approx(0.5) and not numpy_lead["met"]
    assert not any(target.startswith("c busy") for target in checks)
    # Under load only the busy target: the others are ratios of a quiet machine.
    busy = check_targets({"settings": {"busy": True}, "results": rows})
    assert [c["target"] for c in busy] == ["c busy / c-1thread busy, x"]
    assert busy[0]["value"] == pytest.approx(2.0) and not busy[0]["met"]
    # The targets are the plain loss's: a softcapped run has none.
    assert check_targets({"settings": {"busy": False, "softcap": 30.0}, "results": rows}) == []
    assert check_targets({"settings": {"busy": False, "softcap": None}, "results": rows})


def test_a_ratio_next_to_its_bound_is_shown_on_its_own_side():
    from gradsmith.codegen.bench.targets import check_targets, format_targets

    def shown(rows, busy=False):
        checks = check_targets({"settings": {"busy": busy}, "results": rows})
        lines = format_targets(checks)[1:]
        return {check["target"]: line.split("  ")[-3:] for check, line in zip(checks, lines, strict=True)}

    quiet = shown([_row("c", 1.0, pct=49.996), _row("jax-jit", 1.4958, generated=False),
                   _row("numpy", 1.0), _row("textbook", 2.5, generated=False)])
    # 1.4958 and 49.996 to two decimals would read 1.50 and 50.00, as if they met their bounds.
    assert [cell.strip() for cell in quiet["c vs fastest peer (jax-jit), x"]] == [
        "1.496", ">= 1.5", "NOT MET"]
    assert [cell.strip() for cell in quiet["c, % of copy bandwidth"]] == [
        "49.996", ">= 50", "NOT MET"]
    # Away from the bound: two decimals.
    assert [cell.strip() for cell in quiet["numpy vs textbook, x"]] == ["2.50", ">= 1", "met"]
    busy = shown([_row("c", 1.20004), _row("c-1thread", 1.0)], busy=True)
    assert [cell.strip() for cell in busy["c busy / c-1thread busy, x"]] == [
        "1.20004", "<= 1.2", "NOT MET"]


def test_jax_peer_computes_the_textbook_loss_and_gradient():
    pytest.importorskip("jax")
    from gradsmith.codegen.bench.peers import Inputs, _jax_jit

    inputs = Inputs(Case(32, 7, "float32"), seed=1)
    loss, grad = _jax_jit(inputs).call()
    expected_loss, expected_grad = textbook_cross_entropy(*inputs.host())
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-5)
    np.testing.assert_allclose(np.asarray(grad), expected_grad, rtol=1e-4, atol=1e-7)


def test_busy_run_adds_the_one_thread_row_and_its_target(tmp_path):
    path = tmp_path / "busy.json"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(["bench", "--busy", "--shapes", "64x10", "--backends", "c", "--repeat", "1",
                     "--no-progress", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["settings"]["busy"] is True
    names = {row["name"] for row in report["results"] if row["status"] == "ok"}
    if "c" not in names:
        pytest.skip("the C backend cannot run here")
    assert {"c", "c-out", "c-1thread"} <= names
    assert "c busy / c-1thread busy" in stdout.getvalue()


def test_loss_bench_times_the_gradsmith_torch_op_with_the_same_loss():
    pytest.importorskip("torch")
    from gradsmith.codegen.bench import losses

    report = losses.run("focal", ((16, 5),), repeat=1, warmup=0,
                        peers=("torch-eager", "gradsmith.torch"))
    (row,) = report["rows"]
    assert set(row["ms"]) == {"numpy", "c", "torch-eager", "gradsmith.torch"}
    assert row["skipped"] == {}
    for name, loss in row["loss"].items():
        assert loss == pytest.approx(row["loss"]["numpy"], rel=1e-5), name
    assert "gradsmith.torch" in losses.format_report(report)


def test_loss_bench_skips_the_torch_contenders_with_a_reason(monkeypatch):
    from gradsmith.codegen.bench import losses, machine

    monkeypatch.setattr(machine, "optional_torch", lambda: None)
    report = losses.run("distill_kl", ((8, 3),), repeat=1, warmup=0)
    (row,) = report["rows"]
    assert set(row["ms"]) == {"numpy", "c"}
    assert row["skipped"] == dict.fromkeys(losses.PEERS, "PyTorch is not installed")
    table = losses.format_report(report)
    assert "gradsmith.torch  skipped: PyTorch is not installed" in table


def test_loss_bench_skips_a_loss_gradsmith_torch_does_not_take(monkeypatch):
    pytest.importorskip("torch")
    from gradsmith.codegen.bench import losses
    from gradsmith.codegen.torch_op import row_loss_op

    monkeypatch.setattr(row_loss_op, "REGISTERED", ("distill_kl",))
    report = losses.run("focal", ((8, 3),), repeat=1, warmup=0, peers=("gradsmith.torch",))
    (row,) = report["rows"]
    assert "gradsmith.torch" not in row["ms"]
    assert "not 'focal'" in row["skipped"]["gradsmith.torch"]


def test_loss_bench_runs_without_threads_given(monkeypatch, capsys):
    from gradsmith.codegen.bench import machine

    monkeypatch.setattr(machine, "optional_torch", lambda: None)  # no compiling peer here
    assert main(["bench", "--loss", "focal", "--shapes", "8x3", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "8x3" in out and "skipped: PyTorch is not installed" in out


def test_softcap_run_softcaps_every_contender(tmp_path):
    """Every contender computes the softcapped loss (torch's and JAX's own cap * tanh(z / cap)),
    which is not the plain one; textbook NumPy is skipped with its reason."""
    path = tmp_path / "softcap.json"
    backends = "numpy,c,torch,gradsmith.torch,textbook" + (",jax" if _has("jax") else "")
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        assert main(["bench", "--softcap", "1.5", "--shapes", "16x9", "--backends", backends,
                     "--repeat", "1", "--no-progress", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["settings"]["softcap"] == 1.5
    assert "softcap 1.5" in stdout.getvalue()
    rows = {row["name"]: row for row in report["results"]}
    assert rows["textbook"]["status"] == "skipped" and "softcap" in rows["textbook"]["reason"]
    from gradsmith.codegen.bench.peers import Inputs

    logits, target = Inputs(Case(16, 9, "float32"), seed=0).host()
    capped = 1.5 * np.tanh(logits.astype(np.float64) / 1.5)
    expected, _ = textbook_cross_entropy(capped, target)
    plain, _ = textbook_cross_entropy(logits.astype(np.float64), target)
    assert abs(float(expected) - float(plain)) > 0.1
    ran = [row for row in report["results"] if row["status"] == "ok"]
    assert {"numpy", "c"} <= {row["name"] for row in ran}
    for row in ran:
        assert row["loss"] == pytest.approx(float(expected), rel=1e-5), row["name"]


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_warm_up_lasts_at_least_its_minimum_unless_none_is_asked():
    stamps: list[float] = []

    def call() -> None:
        stamps.append(time.perf_counter())

    measure(call, clock=HostClock(), repeat=3, warmup=1)
    warm = stamps[:-3]
    assert len(warm) > 1 and (stamps[-3] - warm[0]) * 1e3 >= WARMUP_MS
    stamps.clear()
    measure(call, clock=HostClock(), repeat=3, warmup=0)
    assert len(stamps) == 3
    stamps.clear()
    measure(lambda: (call(), time.sleep(WARMUP_MS / 1e3)), clock=HostClock(), repeat=1, warmup=2)
    assert len(stamps) == 3  # two slow warm-up calls already last the minimum
