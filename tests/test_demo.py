"""``gradsmith demo`` end to end: every usable backend trains the digits classifier to >= 90%."""

from __future__ import annotations

import re

import pytest
from conftest import available_backends
from gradsmith.codegen.cli import main
from gradsmith.codegen.datasets import digits_split, load_digits


def test_digits_data_and_split_are_fixed():
    features, labels = load_digits()
    assert features.shape == (1797, 64) and labels.shape == (1797,)
    assert features.min() == 0 and features.max() == 16
    assert sorted(set(labels.tolist())) == list(range(10))
    first, second = digits_split(), digits_split()
    assert len(first.y_train) + len(first.y_test) == 1797
    assert (first.x_test == second.x_test).all() and (first.y_train == second.y_train).all()
    assert first.x_train.max() == 1.0


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_demo_reaches_90_percent_with_every_backend(dtype, capsys):
    backends = available_backends(dtype)
    if "numpy" not in backends:
        pytest.skip("the numpy backend does not load")
    status = main(["demo", "--backends", ",".join(backends), "--dtype", dtype])
    out = capsys.readouterr().out
    assert status == 0, out
    rows = re.findall(r"^(\w+)\s+([0-9.]+)\s+([0-9.]+)\s+[0-9.]+$", out, flags=re.MULTILINE)
    assert sorted(name for name, _, _ in rows) == sorted(backends), out
    assert all(float(accuracy) >= 0.9 for _, accuracy, _ in rows), out
    assert len({accuracy for _, accuracy, _ in rows}) == 1, out
    assert "training loss" in out


def test_demo_skips_an_unavailable_backend_with_its_reason(capsys, monkeypatch):
    import gradsmith

    def refuse(backend, dtype="float32"):
        raise RuntimeError(f"no GPU for {backend}")

    monkeypatch.setattr(gradsmith, "load", refuse)
    assert main(["demo", "--backends", "cuda", "--epochs", "1"]) == 1
    out = capsys.readouterr().out
    assert "cuda: skipped (no GPU for cuda)" in out and "no backend could run" in out


@pytest.mark.parametrize(
    "argv", [["--backends", "fortran"], ["--epochs", "0"], ["--lr", "-1"], ["--batch-size", "-3"]]
)
def test_demo_rejects_bad_arguments(argv, capsys):
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
