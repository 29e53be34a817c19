"""The installable package: a wheel built from the checkout, installed non-editable into a fresh
virtual environment whose site-packages is then read-only, works from an unrelated folder
(every CPU backend, two processes building the C library at once, ``prove``, ``validate``), and
installs nothing top-level but ``gradsmith``; compiled kernels go to the per-user cache."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from gradsmith.codegen import native

REPOSITORY = Path(__file__).resolve().parents[1]
# What a wheel is built from: no tests, no hidden folders, no build outputs.
IGNORED = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "tests",
                                 "*.whl", "out")

CALL_EVERY_CPU_BACKEND = """
import math, sys
import numpy as np
import gradsmith
from gradsmith.codegen.registry import backends

assert gradsmith.__file__.startswith(sys.argv[1]), gradsmith.__file__
expected = math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 3
for backend in backends().values():
    if backend.gpu:
        continue
    for dtype in backend.dtypes:
        loss, dlogits = gradsmith.load(backend.name, dtype)(
            np.array([[1.0, 2.0, 3.0]], dtype=dtype), np.array([2]))
        assert abs(float(loss) - expected) < 1e-5 * expected, (backend.name, dtype, loss)
    print(backend.name, "ok")
"""


def _snapshot(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*")}


def _set_writable(folder: Path, writable: bool) -> None:
    for path in [folder, *folder.rglob("*")]:
        mode = path.stat().st_mode
        write = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~write)


def _run(arguments: list[str], cwd: Path, env: dict, timeout: int = 600):
    return subprocess.run(arguments, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_wheel_installs_and_runs_from_anywhere(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(REPOSITORY, source, ignore=IGNORED)
    wheels = tmp_path / "wheels"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "--wheel-dir", str(wheels), str(source)], tmp_path, os.environ.copy())
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = wheels.glob("gradsmith-0.2.0-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        record = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
        listed = [line.split(",")[0] for line in archive.read(record).decode().splitlines()]
    assert {entry.split("/")[0] for entry in listed} == {"gradsmith", "gradsmith-0.2.0.dist-info"}
    assert "gradsmith/generated/c/gradsmith_ce.c" in listed
    assert "gradsmith/generated/numpy/gradsmith_ce_f32.py" in listed

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip",
                    str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    installed = _run([sys.executable, "-m", "pip", "--python", str(python), "install",
                      "--no-deps", "--no-index", "--no-compile", str(wheel)], tmp_path,
                     os.environ.copy())
    assert installed.returncode == 0, installed.stdout[-2000:] + installed.stderr[-2000:]
    (site,) = (venv / "lib").glob("python3*/site-packages")
    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    env.update(GRADSMITH_CACHE=str(cache), PYTHONDONTWRITEBYTECODE="1")
    before = _snapshot(site)
    _set_writable(site, False)
    try:
        script = elsewhere / "call.py"
        script.write_text(CALL_EVERY_CPU_BACKEND)
        # Two first uses at once, into an empty cache: both build or wait, and both succeed.
        first_uses = [subprocess.Popen([str(python), str(script), str(site)], cwd=elsewhere,
                                       env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True) for _ in range(2)]
        for process in first_uses:
            out, err = process.communicate(timeout=600)
            assert process.returncode == 0, err[-3000:]
            assert out.split() == ["numpy", "ok", "c", "ok"], out
        assert list(cache.glob("gradsmith_ce-*.so")), sorted(cache.rglob("*"))

        gradsmith = str(venv / "bin" / "gradsmith")
        proved = _run([gradsmith, "prove", "--classes", "3"], elsewhere, env)
        assert proved.returncode == 0, proved.stdout[-2000:] + proved.stderr[-2000:]
        assert "claims hold" in proved.stdout
        validated = _run([gradsmith, "validate", "--backends", "numpy,c"], elsewhere, env)
        assert validated.returncode == 0, validated.stdout[-3000:] + validated.stderr[-2000:]
        assert str(site / "gradsmith" / "generated") in validated.stderr
        assert "FAIL" not in validated.stdout and " ok" in validated.stdout, validated.stdout
    finally:
        _set_writable(site, True)
    assert _snapshot(site) == before  # nothing was written into site-packages
    assert sorted(p.name for p in elsewhere.iterdir()) == ["call.py"]


def test_the_cache_is_per_user_and_never_site_packages(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADSMITH_CACHE", str(tmp_path / "mine"))
    assert native.cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("GRADSMITH_CACHE")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert native.cache_dir() == tmp_path / "xdg" / "gradsmith"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert native.cache_dir() == tmp_path / "home" / ".cache" / "gradsmith"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert native.cache_dir() == tmp_path / "home" / "Library" / "Caches" / "gradsmith"


@pytest.mark.parametrize("runs", [2])
def test_concurrent_builds_of_one_library_both_succeed(tmp_path, runs):
    """Two processes building the same small library into an empty cache at once."""
    source = tmp_path / "lib.c"
    source.write_text("int gs_answer(void) { return 42; }\n")
    script = (
        "import sys, ctypes\n"
        "from pathlib import Path\n"
        "from gradsmith.codegen.native import build_once\n"
        "from gradsmith.codegen.backends.c.build import compiler\n"
        "path = build_once(Path(sys.argv[1]), 'toy', 'k', lambda out: [*compiler(), '-shared',"
        " '-fPIC', '-o', out, sys.argv[2]], 'toy')\n"
        "print(ctypes.CDLL(str(path)).gs_answer())\n"
    )
    cache = tmp_path / "cache"
    processes = [subprocess.Popen([sys.executable, "-c", script, str(cache), str(source)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(runs)]
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert out.strip() == "42"
    assert [p.name for p in cache.iterdir()] == ["toy-k.so"]  # no temporary left behind
