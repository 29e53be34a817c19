"""``--busy``: another process keeps one core busy while the benchmark runs, as on a shared
machine.  It is stopped on the way out, on errors and Ctrl-C too, and it stops itself if this
process dies."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

# Pure Python arithmetic, checking now and then that its parent is still there.
SPIN = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(100000):\n        pass\n"


@contextlib.contextmanager
def busy_core() -> Iterator[subprocess.Popen]:
    """A child process spinning on one core for the duration of the ``with`` block."""
    spinner = subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL)
    try:
        yield spinner
    finally:
        spinner.terminate()
        try:
            spinner.wait(timeout=5)
        except subprocess.TimeoutExpired:
            spinner.kill()
            spinner.wait(timeout=5)
