"""gradsmith prove: the table, JSON, exit codes and one-line errors."""

from __future__ import annotations

import json

import pytest
from gradsmith.codegen.cli import main
from gradsmith.derive import claims, concrete
from gradsmith.derive.check import ProofError


def test_registry_lists_every_group():
    registry = claims.registry((2, 3))
    groups = {claim.group for claim in registry}
    assert {claims.SYMBOLIC_GROUP, "stability", "options", "reductions", "linear classifier",
            "C = 2", "C = 3", "kernel specs"} <= groups
    assert sum(claim.kind == "kernel spec" for claim in registry) == 8


def test_the_kernels_log_bound_is_a_claim_that_holds():
    log_claims = [claim for claim in claims.registry((2,)) if claim.kind == "log bound"]
    assert [claim.args for claim in log_claims] == [("float32",), ("float64",)]
    for claim in log_claims:
        result = claims.run_claim(claim)
        assert result.result == "holds" and result.method == "symbolic"
        assert result.name.startswith(f"{claim.args[0]} log: relative error <= ")


@pytest.mark.parametrize("function", ["expm1", "log1p", "tanh"])
def test_the_kernels_expm1_log1p_and_tanh_bounds_are_claims_that_hold(function):
    found = [claim for claim in claims.registry((2,)) if claim.kind == f"{function} bound"]
    assert [claim.args for claim in found] == [("float32",), ("float64",)]
    for claim in found:
        result = claims.run_claim(claim)
        assert result.result == "holds" and result.classes == "-"
        assert result.name.startswith(f"{claim.args[0]} {function}: relative error <= ")


@pytest.mark.parametrize(("text", "expected"), [
    ("1..4", (1, 2, 3, 4)), ("3,5,8", (3, 5, 8)), ("1..2, 8", (1, 2, 8)), ("16", (16,)),
])
def test_parse_classes(text, expected):
    assert claims.parse_classes(text) == expected


def test_prove_prints_a_table_and_exits_zero(capsys):
    assert main(["prove", "--classes", "2,3", "--jobs", "1"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split() == ["claim", "C", "method", "result", "seconds"]
    assert "fails" not in captured.out
    assert "kernel spec index_weighted_softcap" in captured.out
    assert "[" in captured.err  # progress goes to stderr


def test_prove_json(capsys):
    assert main(["prove", "--classes", "2", "--jobs", "1", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["all_hold"] is True
    names = {(c["name"], c["classes"]) for c in report["claims"]}
    assert ("dL/dz = p - y", "2") in names and ("dL/dz_i = p_i - y_i", "symbolic") in names
    assert {c["method"] for c in report["claims"]} <= {"symbolic", "numeric"}


def test_a_failing_claim_exits_one(monkeypatch, capsys):
    def broken(num_classes):
        raise ProofError("step 'dp/dz, step 2 (quotient rule)' does not hold")

    monkeypatch.setattr(concrete, "softmax_jacobian", broken)
    monkeypatch.setattr(claims, "_FIXED", ())
    monkeypatch.setattr(claims, "SPEC_COUNT", 0)
    assert main(["prove", "--classes", "2", "--jobs", "1"]) == 1
    out = capsys.readouterr().out
    assert "fails" in out and "quotient rule" in out


@pytest.mark.parametrize("argv", [
    ["prove", "--classes", "0"],
    ["prove", "--classes", "abc"],
    ["prove", "--classes", "5..2"],
    ["prove", "--classes", ""],
    ["prove", "--jobs", "0"],
    ["prove", "--bogus"],
])
def test_bad_input_is_one_line_and_exit_two(argv, capsys):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
