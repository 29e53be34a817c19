"""``gradsmith generate``: golden check, determinism, atomic writes, template errors, and the
emitted code following the derivation."""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from gradsmith.codegen import registry, render
from gradsmith.codegen.backends import numpy as numpy_backend
from gradsmith.codegen.cli import main
from gradsmith.derive import kernel_spec as ks

REPOSITORY = Path(__file__).resolve().parents[1]
GENERATED = REPOSITORY / "generated"


PRESENT = registry.names()
BACKENDS_ARGUMENT = ",".join(PRESENT)


@pytest.fixture(scope="module")
def emitted() -> dict[str, str]:
    return render.render_all(PRESENT)


@pytest.fixture
def tree(tmp_path, emitted) -> Path:
    out = tmp_path / "generated"
    render.write_tree(emitted, out, PRESENT)
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def generate(*arguments: str) -> int:
    return main(["generate", "--backends", BACKENDS_ARGUMENT, *arguments])


def test_checked_in_tree_is_up_to_date(capsys):
    assert generate("--check", "--out", str(GENERATED)) == 0, capsys.readouterr().out


def test_check_shows_a_unified_diff_after_an_edit(tree, capsys):
    edited = min(p for p in tree.rglob("*") if p.is_file())
    text = edited.read_text()
    edited.write_text(text.replace("Regenerate with", "Hand-edited, regenerate with", 1))
    assert generate("--check", "--out", str(tree)) == 1
    output = capsys.readouterr()
    relative = edited.relative_to(tree).as_posix()
    assert f"--- a/{relative}" in output.out and f"+++ b/{relative}" in output.out
    assert re.search(r"^-.*Hand-edited, regenerate with", output.out, re.MULTILINE)
    assert re.search(r"^\+.*Regenerate with", output.out, re.MULTILINE)
    assert "out of date" in output.err
    assert edited.read_text() != text  # --check never writes


def test_output_is_byte_identical_across_hash_seeds(tmp_path, emitted):
    # A whole generation in another process, under a hash seed other than this process's.
    seed = "0" if os.environ.get("PYTHONHASHSEED") == "4242" else "4242"
    run = subprocess.run(
        [sys.executable, "-m", "gradsmith", "generate", "--backends", BACKENDS_ARGUMENT,
         "--out", str(tmp_path / "seeded")],
        env={**os.environ, "PYTHONHASHSEED": seed}, cwd=REPOSITORY,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600, check=False)
    assert run.returncode == 0, run.stderr
    tree = snapshot(tmp_path / "seeded")
    assert tree and tree == {path: text.encode() for path, text in emitted.items()}


def test_only_changed_files_are_rewritten(tree):
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    assert len(files) >= 2
    before = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in files}
    edited = files[0]
    edited.write_text(edited.read_text() + "# stray line\n")
    edited_stat = (edited.stat().st_ino, edited.stat().st_mtime_ns)
    assert generate("--out", str(tree)) == 0
    for path in files[1:]:
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == before[path], path
    assert (edited.stat().st_ino, edited.stat().st_mtime_ns) != edited_stat
    assert "# stray line" not in edited.read_text()


def test_unrelated_files_are_kept_and_stale_emitted_files_removed(tree):
    backend = PRESENT[0]
    notes = tree / backend / "NOTES.txt"
    notes.write_text("kept\n")
    readme = tree / "README.md"
    readme.write_text("kept too\n")
    stale = tree / backend / "old_kernel.py"
    stale.write_text(f"# {render.DO_NOT_EDIT}\n")
    assert generate("--out", str(tree)) == 0
    assert notes.read_text() == "kept\n" and readme.read_text() == "kept too\n"
    assert not stale.exists()


def test_output_under_a_file_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder\n")
    assert generate("--out", str(blocker / "generated")) == 2
    error = capsys.readouterr().err
    assert error.strip().splitlines()[-1].startswith("gradsmith: error:")
    assert "Traceback" not in error
    assert generate("--out", str(blocker)) == 2
    assert "not a folder" in capsys.readouterr().err
    assert blocker.read_text() == "not a folder\n"


def test_unwritable_folder_leaves_the_tree_intact(tree, monkeypatch, capsys):
    for path in tree.rglob("*.py"):
        path.write_text(path.read_text() + "# older version\n")
    before = snapshot(tree)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(kwargs.get("dir", "")))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    assert generate("--out", str(tree)) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("gradsmith: error:") and "Permission denied" in error
    assert snapshot(tree) == before


def test_failure_half_way_restores_the_previous_tree(tree, monkeypatch, capsys):
    for path in (p for p in tree.rglob("*") if p.is_file()):
        path.write_text(path.read_text() + "# older version\n")
    assert len(snapshot(tree)) >= 2
    before = snapshot(tree)
    real_replace = os.replace
    calls = []

    def replace_fails_on_the_second_file(source, destination):
        calls.append(destination)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(source, destination)

    monkeypatch.setattr(os, "replace", replace_fails_on_the_second_file)
    assert generate("--out", str(tree)) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert len(calls) >= 3  # the first file was replaced, then put back
    assert snapshot(tree) == before  # no half-written file and no temporary left behind


def test_bad_backends_argument_is_a_one_line_error(capsys):
    assert main(["generate", "--backends", "fortran"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "--backends" in error


@pytest.fixture
def scratch_templates(tmp_path, monkeypatch):
    """A template folder of our own for the environment, restored afterwards."""
    monkeypatch.setattr(render, "TEMPLATE_ROOT", tmp_path)
    render.environment.cache_clear()
    yield tmp_path
    render.environment.cache_clear()


def test_template_errors_name_the_template_and_the_variable(scratch_templates):
    (scratch_templates / "broken").mkdir()
    (scratch_templates / "broken" / "kernel.j2").write_text("int {{ kernel_name }}(void) { return {{ missing_value }}; }\n")
    with pytest.raises(render.TemplateError, match=r"broken/kernel\.j2.*missing_value"):
        render.render_template("broken/kernel.j2", kernel_name="k")


def test_errors_raised_inside_a_template_name_it(scratch_templates):
    (scratch_templates / "broken").mkdir()
    (scratch_templates / "broken" / "name.j2").write_text("void {{ name | c_identifier }}(void);\n")
    with pytest.raises(render.TemplateError, match=r"broken/name\.j2.*'2fast' is not a valid C identifier"):
        render.render_template("broken/name.j2", name="2fast")


def test_real_template_missing_context_is_named():
    with pytest.raises(render.TemplateError, match=r"numpy/module\.py\.j2.*'preamble' is undefined"):
        render.render_template(numpy_backend.TEMPLATE)


@pytest.mark.parametrize("name", ["9lives", "a-b", "", "int x", "x\n", "naïve", None, 3])
def test_c_identifier_rejects_bad_names(name):
    with pytest.raises(render.TemplateError, match="not a valid C identifier"):
        render.c_identifier(name)


@pytest.mark.parametrize("name", ["gs_ce_f32", "_private", "index_weighted_softcap", "X9"])
def test_c_identifier_accepts_good_names(name):
    assert render.c_identifier(name) == name


def _preamble_fields(text: str) -> dict[str, str]:
    head = text.splitlines()[:10]
    fields = {}
    for line in head:
        match = re.match(r"^\W*(Template|Derivation|Operations after CSE|ABI): (.+)$", line)
        if match:
            fields[match.group(1)] = match.group(2)
    return fields


def test_every_emitted_file_starts_with_the_preamble(emitted):
    assert emitted
    for path, text in emitted.items():
        assert render.DO_NOT_EDIT in "\n".join(text.splitlines()[:2]), path  # after a comment opener
        fields = _preamble_fields(text)
        assert set(fields) == {"Template", "Derivation", "Operations after CSE", "ABI"}, path
        assert (render.TEMPLATE_ROOT / fields["Template"]).is_file(), path
        assert re.match(r"[0-9a-f]{16} ", fields["Derivation"]), path
        assert int(fields["Operations after CSE"]) > 0, path


@pytest.fixture
def respecify(monkeypatch):
    """Replace a definition in derive.kernel_spec; specs built afterwards use it."""

    def apply(name, definition):
        ks.kernel_spec.cache_clear()
        monkeypatch.setattr(ks, name, definition)

    yield apply
    ks.kernel_spec.cache_clear()


def spread_elsewhere(prob, classes=ks.num_classes):
    """Label smoothing that spreads its mass over the C - 1 other classes instead of all C."""
    return (1 - ks.label_smoothing) * prob + ks.label_smoothing * (1 - prob) / (classes - 1)


def _load_text(text: str, tmp_path: Path, name: str):
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_different_target_definition_changes_the_emitted_code(respecify, tmp_path):
    def probs_specs():
        return tuple(ks.kernel_spec("probs", False, softcapped) for softcapped in (False, True))

    original = numpy_backend.render_module("float64", probs_specs())
    respecify("smoothed_target", spread_elsewhere)
    changed = numpy_backend.render_module("float64", probs_specs())
    assert _preamble_fields(changed)["Derivation"] != _preamble_fields(original)["Derivation"]
    assert "num_classes - 1" in changed and "num_classes - 1" not in original

    module = _load_text(changed, tmp_path, "changed_ce")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 6))
    target = rng.dirichlet(np.ones(6), 4)
    eps = 0.3
    loss, dlogits = module.cross_entropy(logits, target, label_smoothing=eps, reduction="sum")
    smoothed = (1 - eps) * target + eps * (1 - target) / 5
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    probabilities = np.exp(log_probs)
    np.testing.assert_allclose(loss, -(smoothed * log_probs).sum(), rtol=1e-12)
    expected_grad = probabilities * smoothed.sum(axis=1, keepdims=True) - smoothed
    np.testing.assert_allclose(dlogits, expected_grad, rtol=1e-10, atol=1e-14)


def test_a_replaced_gradient_expression_is_what_gets_emitted(tmp_path):
    spec = ks.kernel_spec("index", False, False)
    doubled = dataclasses.replace(
        spec, dlogit=2 * spec.dlogit, dlogit_from_stored=2 * spec.dlogit_from_stored
    )
    changed = numpy_backend.render_module("float64", (doubled,))
    original = numpy_backend.render_module("float64", (spec,))
    grad_line = [line for line in changed.splitlines() if line.strip().startswith("dlogit = ")]
    assert grad_line and grad_line != [
        line for line in original.splitlines() if line.strip().startswith("dlogit = ")
    ]
    logits = np.random.default_rng(1).standard_normal((5, 4))
    target = np.array([0, 3, 1, 2, 2])
    _, base = _load_text(original, tmp_path, "base_ce").cross_entropy(logits, target, reduction="sum")
    _, twice = _load_text(changed, tmp_path, "twice_ce").cross_entropy(logits, target, reduction="sum")
    off_target = np.ones_like(logits, dtype=bool)
    off_target[np.arange(5), target] = False
    np.testing.assert_allclose(twice[off_target], 2 * base[off_target], rtol=1e-14)


def test_numpy_printer_keeps_the_dtype():
    from gradsmith.codegen.backends.numpy.printer import KernelNumPyPrinter

    x = sp.Symbol("x", real=True)
    y = sp.Symbol("y", real=True)
    printed = KernelNumPyPrinter("float32").doprint(sp.Rational(1, 3) * x + sp.Float(0.25) * y + 2)
    assert "(np.float32(1)/np.float32(3))" in printed and "np.float32(0.25)" in printed
    assert "float64" not in printed and "0.333" not in printed
    with pytest.raises(ValueError, match="dtype"):
        KernelNumPyPrinter("float16")


@pytest.mark.parametrize("text", [
    "1 - t**2/s**2", "c*t**2/s**2", "-t/s**3", "(c + t)/s**2", "c/(s**2*t)", "s**(-2)",
    "-2*c/s**4", "c*t**2", "c/(s*t)**2", "t/s",
])
def test_c_printer_keeps_the_value_of_products_and_quotients(text):
    """C reads a*b/c*d as ((a*b)/c)*d, as Python does: the printed text, evaluated with
    Python's precedence, must keep the expression's value."""
    from gradsmith.codegen.backends.c.printer import KernelCPrinter

    c, s, t = sp.symbols("c s t", real=True)
    expr = sp.sympify(text, locals={"c": c, "s": s, "t": t})
    printed = KernelCPrinter("float64").doprint(expr)
    assert "pow" not in printed, printed
    values = {c: 1.7, s: 3.1, t: -0.6}
    got = eval(printed, {}, {str(symbol): value for symbol, value in values.items()})
    assert got == pytest.approx(float(expr.subs(values)), rel=1e-14), printed


def test_generate_refuses_a_spec_that_fails_its_proof(tree, monkeypatch, capsys):
    spec = ks.kernel_spec("index", False, False)
    wrong = dataclasses.replace(spec, dlogit=2 * spec.dlogit)
    monkeypatch.setattr(ks, "all_specs", lambda: (wrong,))
    render.verify_specs.cache_clear()
    before = snapshot(tree)
    try:
        assert generate("--out", str(tree)) == 2
    finally:
        render.verify_specs.cache_clear()
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "does not hold" in errors[0]
    assert "Traceback" not in errors[0]
    assert snapshot(tree) == before
