"""nvcc for the CUDA tests: find it, build once per content (cached), read ptxas's report.

Compiling needs only nvcc; running needs CuPy and a GPU (``gpu``: the skip says which).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CUDA_DIR = ROOT / "generated" / "cuda"
NVCC = shutil.which("nvcc") or next(
    (p for p in ("/usr/local/cuda/bin/nvcc",) if Path(p).is_file()), None
)
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not found")
ARCHS = ("sm_70", "sm_80", "sm_90")
CACHE = Path(os.environ.get("GRADSMITH_CACHE", Path.home() / ".cache" / "gradsmith")) / "cuda-tests"


def supported_archs() -> set[str]:
    out = subprocess.run([NVCC, "--list-gpu-code"], capture_output=True, text=True, check=False)
    return set(out.stdout.split())


CE_SOURCES = ("gradsmith_ce.cu", "gradsmith_ce.cuh")


def cached_build(tag: str, command: list[str], extra: bytes = b"",
                 sources: tuple[str, ...] = CE_SOURCES) -> tuple[Path, str]:
    """Run an nvcc command once per (its ``sources`` in generated/cuda, command); return its
    output folder and log."""
    digest = hashlib.sha256(extra + "\0".join(command).encode())
    for name in sources:
        digest.update((CUDA_DIR / name).read_bytes())
    folder = CACHE / f"{tag}-{digest.hexdigest()[:20]}"
    log = folder / "log.txt"
    if not log.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.fail(f"{' '.join(command)} failed:\n{result.stdout}\n{result.stderr}")
        log.write_text(result.stdout + result.stderr)
    return folder, log.read_text()


def ptxas_report(tag: str, source: Path, sources: tuple[str, ...] = CE_SOURCES
                 ) -> tuple[list[str], list[tuple[str, str]], list[tuple[str, ...]], str]:
    """Compile ``source`` for every architecture this nvcc supports of ARCHS with every warning
    an error and ptxas verbose; return the architectures, the (entry, arch) pairs compiled, each
    function's (stack frame, spill stores, spill loads) and the log."""
    archs = [a for a in ARCHS if a in supported_archs()]
    gencode = []
    for arch in archs:
        number = arch.removeprefix("sm_")
        gencode += ["-gencode", f"arch=compute_{number},code=[sm_{number},compute_{number}]"]
    command = [NVCC, "-Werror", "all-warnings", "-std=c++17", "-O3", "--threads", "2",
               "-Xptxas", "-v", *gencode, "-c", str(source), "-o", f"{source.stem}.o"]
    _, log = cached_build(tag, command, sources=sources)
    entries = re.findall(r"Compiling entry function '(\w+)' for '(sm_\d+)'", log)
    frames = re.findall(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return archs, entries, frames, log


def gpu_available() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 -- CuPy raises its own error types without a driver
        return False


gpu = pytest.mark.skipif(not gpu_available(), reason="no NVIDIA GPU / CuPy")
