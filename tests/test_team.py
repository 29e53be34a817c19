"""The C kernels' team of OpenMP threads: calls from several Python threads at once, a forked
child, how many threads a call starts (as many as OpenMP allows, less the caller), that a team
thread on the caller's processor moves off it, and that idle ones sleep.  Results are compared
bit for bit with one call at a time on one thread: the team changes who runs a segment, never
what it computes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from gradsmith.codegen.backends.c import build, runtime
from gradsmith.codegen.loading import load

# 655360 elements: a team of up to 20 threads, in 1024 segments of 64 rows.
SHAPE = (65536, 10)


@pytest.fixture(scope="module")
def kernel():
    try:
        return load("c", "float32")
    except (OSError, RuntimeError) as error:
        pytest.skip(f"no C kernels here: {error}")


def _run(script: str, threads: int, **environment: str) -> list[str]:
    """The words ``script`` prints, run in a fresh Python with ``threads`` OpenMP threads (and
    ``environment``)."""
    result = subprocess.run([sys.executable, "-c", script],
                            env={**os.environ, "OMP_NUM_THREADS": str(threads), **environment},
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _inputs(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal(SHAPE)).astype(np.float32)
    return logits, rng.integers(0, SHAPE[1], SHAPE[0])


def _serial(logits: np.ndarray, target: np.ndarray,
            reduction: str = "mean") -> tuple[np.ndarray, np.ndarray]:
    serial = runtime.bind(build.load_library(build.build(openmp=False)), "float32")
    return serial(logits, target, reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_calls_from_several_threads_at_once_match_one_thread_bitwise(kernel, reduction):
    expected = {seed: _serial(*_inputs(seed), reduction) for seed in range(4)}
    failures: list[str] = []

    def calls(seed: int) -> None:
        logits, target = _inputs(seed)
        for _ in range(12):
            loss, dlogits = kernel(logits, target, reduction=reduction)
            if not (np.array_equal(loss, expected[seed][0])
                    and np.array_equal(dlogits, expected[seed][1])):
                failures.append(f"inputs {seed}")
                return

    threads = [threading.Thread(target=calls, args=(seed,)) for seed in expected]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a call never returned"
    assert not failures, failures


FORK = """
import os, signal, numpy as np
from gradsmith.codegen.loading import load
kernel = load("c", "float32")
rng = np.random.default_rng(1)
logits = (3 * rng.standard_normal((65536, 10))).astype(np.float32)
target = rng.integers(0, 10, 65536)
kernel(logits, target)  # the parent's team runs now
read, write = os.pipe()
child = os.fork()
if child == 0:
    signal.alarm(60)  # a child stuck in a parallel region ends here
    before = len(os.listdir("/proc/self/task"))
    loss, dlogits = kernel(logits, target)
    started = len(os.listdir("/proc/self/task")) - before
    os.write(write, f"{started} {float(loss)!r} {float(np.abs(dlogits).sum(dtype=np.float64))!r}".encode())
    os._exit(0)
os.close(write)
_, status = os.waitpid(child, 0)
print(os.read(read, 200).decode(), status)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="fork with threads, /proc: Linux")
def test_a_forked_child_runs_on_its_own_thread_and_gets_the_same_bits(kernel):
    """libgomp's threads are not in a forked child, and its first parallel region there waited
    for them forever: the child runs every call on the thread that forked (a fresh process, so
    that the parent's first call surely used its team)."""
    parts = _run(FORK, 2)
    loss, dlogits = _serial(*_inputs(1))  # the inputs FORK makes
    assert len(parts) == 4 and parts[3] == "0", f"the forked child's call did not finish: {parts}"
    started, child_loss, child_sum, _ = parts
    assert (int(started), float(child_loss), float(child_sum)) == (
        0, float(loss), float(np.abs(dlogits).sum(dtype=np.float64)))


# A fresh process's kernel and a call's worth of inputs (1048576 elements).
PRELUDE = """
import os, time, numpy as np
from gradsmith.codegen.loading import load
kernel = load("c", "float32")
rng = np.random.default_rng(0)
logits = rng.standard_normal((262144, 4)).astype(np.float32)
target = rng.integers(0, 4, 262144)
"""

COUNT_THREADS = PRELUDE + """
before = len(os.listdir("/proc/self/task"))
counts = []
for _ in range(5):
    kernel(logits, target)
    counts.append(len(os.listdir("/proc/self/task")) - before)
print(*counts)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc")
@pytest.mark.parametrize("threads", [1, 3])
def test_a_call_starts_as_many_threads_as_openmp_allows_and_keeps_them(kernel, threads):
    assert _run(COUNT_THREADS, threads) == [str(threads - 1)] * 5


IDLE_THREADS = PRELUDE + """
before = set(os.listdir("/proc/self/task"))
kernel(logits, target)
started = set(os.listdir("/proc/self/task")) - before
time.sleep(0.2)
states = []
for tid in sorted(started):
    with open(f"/proc/self/task/{tid}/stat") as stat:
        states.append(stat.read().rsplit(")", 1)[1].split()[0])
print(*states)
"""


# The team's thread and the caller put on one processor, as a scheduler that packs woken
# threads onto busy processors does; the next call finds them there.
SHARED_CPU = PRELUDE + """
first = set(os.listdir("/proc/self/task"))
kernel(logits, target)
(worker,) = (int(tid) for tid in set(os.listdir("/proc/self/task")) - first)
allowed = os.sched_getaffinity(0)
cpu = min(allowed)
os.sched_setaffinity(0, {cpu})
os.sched_setaffinity(worker, {cpu})
loss, dlogits = kernel(logits, target)
print(cpu, *sorted(allowed), "|", *sorted(os.sched_getaffinity(worker)), "|",
      repr(float(loss)), repr(float(np.abs(dlogits).sum(dtype=np.float64))))
"""


def _shared_cpu(**environment: str) -> tuple[int, set[int], set[int], list[str]]:
    """The caller's processor, the process's, the team thread's after the call, and the
    call's loss and gradient sum as printed."""
    words = _run(SHARED_CPU, 2, **environment)
    first, second = (index for index, word in enumerate(words) if word == "|")
    return (int(words[0]), {int(word) for word in words[1:first]},
            {int(word) for word in words[first + 1:second]}, words[second + 1:])


def _prelude_serial() -> list[str]:
    rng = np.random.default_rng(0)  # the inputs PRELUDE makes
    logits = rng.standard_normal((262144, 4)).astype(np.float32)
    loss, dlogits = _serial(logits, rng.integers(0, 4, 262144))
    return [repr(float(loss)), repr(float(np.abs(dlogits).sum(dtype=np.float64)))]


MOVES = pytest.mark.skipif(
    not sys.platform.startswith("linux") or len(os.sched_getaffinity(0)) < 2,
    reason="moves threads between processors: Linux, two or more")


@MOVES
def test_a_team_thread_on_the_callers_processor_moves_to_the_others(kernel):
    cpu, allowed, worker, results = _shared_cpu()
    assert worker == allowed - {cpu}
    assert results == _prelude_serial()


@MOVES
def test_a_bound_team_is_left_where_openmp_put_it(kernel):
    """With OMP_PROC_BIND set, OpenMP places its threads, and they stay where they are put (one
    place of every processor, so that a move would have somewhere to go)."""
    place = "{" + ",".join(map(str, sorted(os.sched_getaffinity(0)))) + "}"
    cpu, _, worker, results = _shared_cpu(OMP_PROC_BIND="true", OMP_PLACES=place)
    assert worker == {cpu}
    assert results == _prelude_serial()


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads thread states in /proc")
def test_idle_threads_sleep_instead_of_holding_their_cores(kernel):
    assert _run(IDLE_THREADS, 2) == ["S"]
