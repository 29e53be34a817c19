"""A loss is one definition: Poly-1, defined in a file under tests/, becomes proven and
validated NumPy and C kernels in a temporary tree, with nothing in derive/ or codegen/ edited."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gradsmith import load
from gradsmith.codegen.cli import main

POLY1 = str(Path(__file__).parent / "losses" / "poly1.py")
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("kernels")
    assert main(["generate", "--out", str(out), "--backends", "numpy,c", "--loss", POLY1]) == 0
    return out


def test_generate_emits_the_new_loss_beside_the_others(tree):
    emitted = {p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file()}
    assert {"numpy/gradsmith_poly1_f64.py", "c/gradsmith_poly1.c"} <= emitted
    assert main(["generate", "--out", str(tree), "--backends", "numpy,c", "--loss", POLY1,
                 "--check"]) == 0


def test_prove_checks_the_new_loss(capsys):
    assert main(["prove", "--loss", POLY1]) == 0
    out = capsys.readouterr().out
    assert "poly1: epsilon = 0 gives cross-entropy" in out and "fails" not in out


@pytest.mark.parametrize("backend", ["numpy", "c"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_the_new_kernels_match_torch(tree, backend, dtype):
    rng = np.random.default_rng(1)
    z = (rng.standard_normal((6, 5)) * 2).astype(dtype)
    t = np.array([0, 4, -100, 2, 1, 3])
    poly1 = load(backend, dtype, loss=POLY1, kernels=tree)
    loss, grad = poly1(z, t, epsilon=2.0)
    logits = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    keep = torch.tensor(t) != -100
    safe = torch.where(keep, torch.tensor(t), 0)
    log_p_t = torch.log_softmax(logits, -1).gather(1, safe[:, None])[:, 0]
    rows = torch.where(keep, -log_p_t + 2.0 * (1 - log_p_t.exp()), 0)
    want = rows.sum() / keep.sum()
    want.backward()
    tolerance = 1e-12 if dtype == "float64" else 2e-6
    assert float(loss) == pytest.approx(want.item(), rel=tolerance)
    np.testing.assert_allclose(grad, logits.grad.numpy(), rtol=tolerance, atol=tolerance)


def test_the_emitted_c_compiles_cleanly_without_promoting_floats(tree):
    import shutil
    import subprocess

    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    for source in sorted((tree / "c").glob("gradsmith_*.c")):
        if source.name == "gradsmith_ce.c":
            continue
        done = subprocess.run([compiler, "-std=c99", "-Wall", "-Wextra", "-Wdouble-promotion",
                               "-Werror", "-fopenmp", "-fsyntax-only", str(source)],
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr


def test_validate_checks_the_new_loss_and_catches_a_flipped_sign(tree, tmp_path, capsys):
    import shutil

    assert main(["validate", "--loss", POLY1, "--kernels", str(tree)]) == 0
    broken = tmp_path / "broken"
    shutil.copytree(tree, broken)
    module = broken / "numpy" / "gradsmith_poly1_f64.py"
    text = module.read_text()
    assert "    coef_p = " in text
    module.write_text(text.replace("    coef_p = ", "    coef_p = -", 1))
    capsys.readouterr()
    assert main(["validate", "--loss", POLY1, "--kernels", str(broken), "--backends", "numpy"]) == 1
    assert "FAIL" in capsys.readouterr().out
