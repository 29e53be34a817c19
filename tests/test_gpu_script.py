"""tests/gpu/run.sh without a GPU: it exits at once, with a clear message and status 3, and
writes no report."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "gpu" / "run.sh"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_run_sh_without_a_gpu_exits_at_once(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    # An nvidia-smi that finds no device, ahead of any real one.
    (fake / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found' >&2\nexit 6\n")
    (fake / "nvidia-smi").chmod(0o755)
    report = tmp_path / "report.txt"
    environment = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", str(SCRIPT), str(report)], capture_output=True, text=True,
                            env=environment, timeout=30, check=False)
    assert result.returncode == 3
    assert "no NVIDIA GPU" in result.stderr and "nothing run" in result.stderr
    assert not report.exists()
