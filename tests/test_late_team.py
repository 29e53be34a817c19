"""The C kernels' late-team rule, driven with made-up region timings: when calls go to one
thread, for how many elements, and how that run grows on a busy machine and shrinks on a quiet
one; and a loop's own runs on one thread, when they come and how they judge its team (the
constants are the generated file's own)."""

from __future__ import annotations

import ctypes
import re
import subprocess
import time

import pytest
from conftest import C_SOURCE
from gradsmith.codegen.backends.c import build

HARNESS = """
/* The late rule alone: a loop that has no one-thread run of its own to go by, and is not due
   one. */
static struct gs_team_loop settled;
static void settle(int64_t elements)
{
    settled.rows = elements;
    settled.classes = 1;
    settled.alone_seconds = 0.0;
    settled.doubtful_runs = -1000000;
}
void note(int threads, double region_seconds, double fastest_rate, int64_t segments,
          int64_t elements)
{ settle(elements); gs_note_team(&settled, threads, region_seconds, fastest_rate, segments, elements); }
int team(int wanted, int64_t elements) { settle(elements); return gs_team_threads(&settled, wanted, elements, 1); }
/* One loop as a kernel keeps it. */
static struct gs_team_loop loop;
void loop_note(int threads, double region_seconds, double fastest_rate, int64_t segments,
               int64_t rows, int64_t classes)
{ gs_note_team(&loop, threads, region_seconds, fastest_rate, segments, rows * classes); }
int loop_team(int wanted, int64_t rows, int64_t classes) { return gs_team_threads(&loop, wanted, rows, classes); }
int64_t serial_left(void) { return gs_serial_elements; }
int64_t budget(void) { return gs_serial_budget; }
double thread_seconds(void) { return gs_thread_seconds(); }
"""
# 1 s against 20 segments at 0.1 s each for the fastest thread (2 s alone), of 1000 elements:
# few enough that the run a late region asks for is never above the shortest.
ON_TIME = (2, 1.0, 0.1, 20, 1000)
LATE = (2, 3.0, 0.1, 20, 1000)


def _define(name: str) -> float:
    """A constant of the generated file: an int, or a float where it has a point."""
    match = re.search(rf"^#define {name} ([0-9.]+)$", C_SOURCE.read_text(), re.MULTILINE)
    assert match, name
    return float(match.group(1)) if "." in match.group(1) else int(match.group(1))


@pytest.fixture()
def rule(tmp_path):
    if not C_SOURCE.is_file():
        pytest.skip("generated/c/gradsmith_ce.c is missing")
    wrapper = tmp_path / "late_team.c"
    wrapper.write_text(f'#include "{C_SOURCE}"\n{HARNESS}')
    library = tmp_path / "late_team.so"
    command = [*build.compiler(), "-std=c99", "-O0", "-fPIC", "-shared", *build.OPENMP_FLAGS,
               f"-I{C_SOURCE.parent}", "-o", str(library), str(wrapper), "-lm"]
    try:
        result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    except OSError as error:
        pytest.skip(f"C compiler cannot be run: {error}")
    if result.returncode != 0 and "omp" in result.stderr:
        pytest.skip(f"no OpenMP here: {result.stderr.strip()[:200]}")
    assert result.returncode == 0, result.stderr
    lib = ctypes.CDLL(str(library))
    lib.note.argtypes = [ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_int64,
                         ctypes.c_int64]
    lib.team.argtypes = [ctypes.c_int, ctypes.c_int64]
    lib.loop_note.argtypes = [ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_int64,
                              ctypes.c_int64, ctypes.c_int64]
    lib.loop_team.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    lib.serial_left.restype = lib.budget.restype = ctypes.c_int64
    lib.thread_seconds.restype = ctypes.c_double
    return lib


def _run_out(lib, elements: int) -> int:
    """Calls of ``elements`` each that go to one thread until the team is tried again."""
    calls = 0
    while lib.team(2, elements) == 1:
        calls += 1
    return calls


def test_two_late_regions_in_a_row_send_the_shortest_run_to_one_thread(rule):
    least = _define("GS_LATE_TEAM_SERIAL_MIN")
    rule.note(*LATE)
    rule.note(*ON_TIME)
    rule.note(*LATE)
    assert rule.serial_left() == 0 and rule.team(2, 1000) == 2  # not in a row: the team stays
    rule.note(*LATE)
    assert rule.serial_left() == least
    assert _run_out(rule, least // 4) == 4
    assert rule.team(2, 1000) == 2
    assert rule.team(1, 1000) == 1  # one thread asked for is one thread, whatever the state


def test_a_late_retry_doubles_the_run_up_to_the_longest_and_on_time_halves_it(rule):
    least, most = _define("GS_LATE_TEAM_SERIAL_MIN"), _define("GS_LATE_TEAM_SERIAL_MAX")
    rule.note(*LATE)
    rule.note(*LATE)
    runs = [rule.serial_left()]
    for _ in range(40):  # a busy machine: every retry is late again, at once
        _run_out(rule, least)
        rule.note(*LATE)
        runs.append(rule.serial_left())
    assert runs[:3] == [least, 2 * least, 4 * least]
    assert max(runs) == most and runs[-1] == most
    _run_out(rule, most)
    rule.note(*ON_TIME)  # quiet again
    assert rule.budget() == most // 2 and rule.serial_left() <= 0
    for _ in range(40):
        rule.note(*ON_TIME)
    assert rule.budget() == least
    rule.note(*LATE)  # after regions on time, one late region is a thread preempted once
    assert rule.serial_left() <= 0 and rule.team(2, 1000) == 2


def test_a_late_retry_runs_the_ratio_times_what_it_lost_on_one_thread(rule):
    least, most = _define("GS_LATE_TEAM_SERIAL_MIN"), _define("GS_LATE_TEAM_SERIAL_MAX")
    ratio = _define("GS_LATE_TEAM_SERIAL_RATIO")
    elements = least  # regions of 5 s whose fastest thread alone would have taken 2 s: 3 s lost
    rule.note(2, 5.0, 0.1, 20, elements)
    rule.note(2, 5.0, 0.1, 20, elements)
    assert rule.serial_left() == least  # not the first run: threads slow to wake after a pause
    _run_out(rule, elements)
    rule.note(2, 5.0, 0.1, 20, elements)  # the retry is late too
    run = ratio * 3 * elements // 2
    assert run > 2 * least and rule.serial_left() == run
    assert _run_out(rule, elements) == ratio * 3 // 2
    rule.note(2, 5.0, 0.1, 20, elements)  # and again: doubling is the longer now
    assert rule.serial_left() == 2 * run
    _run_out(rule, elements)
    rule.note(2, 5.0, 0.1, 20, 64 * most)  # never past the longest run
    assert rule.serial_left() == most


def test_a_retry_only_a_little_late_doubles_the_run(rule):
    least = _define("GS_LATE_TEAM_SERIAL_MIN")
    rule.note(*LATE)
    rule.note(*LATE)
    _run_out(rule, least)
    rule.note(2, 2.1, 0.1, 20, least)  # 5% over one thread's time: a thread slow to wake
    assert rule.serial_left() == 2 * least


def test_a_threads_rate_is_its_processor_time_not_the_wall_clock(rule):
    """A thread whose core another process takes loses wall time, not processor time: asleep
    here, as preempted there, its clock stands still."""
    start = rule.thread_seconds()
    time.sleep(0.3)
    slept = rule.thread_seconds() - start
    start, until = rule.thread_seconds(), time.perf_counter() + 0.3
    while time.perf_counter() < until:
        pass
    spun = rule.thread_seconds() - start
    assert slept < 0.05 and spun > 0.05, (slept, spun)


def _sample_calls(lib, rows: int, classes: int, calls: int, region: float = 1.9) -> list[int]:
    """The threads of ``calls`` calls of one loop and shape, each team region taking ``region``
    seconds where its fastest thread would have taken 2 s alone: on time, and by default
    doubtful.  Each call on one thread takes 2 s."""
    threads = []
    for _ in range(calls):
        threads.append(lib.loop_team(2, rows, classes))
        lib.loop_note(threads[-1], region if threads[-1] == 2 else 2.0, 0.1, 20, rows, classes)
    return threads


def _schedule(calls: int) -> list[int]:
    """Doubtful team runs until a run on one thread: the first few, then twice as many each
    time, up to the most."""
    first, most = _define("GS_TEAM_SAMPLE_FIRST"), _define("GS_TEAM_SAMPLE_RUNS")
    threads, runs = [], first
    while len(threads) < calls:
        threads += [2] * runs + [1]
        runs = min(2 * runs, most)
    return threads[:calls]


def test_a_doubtful_loop_runs_a_shape_on_one_thread_after_a_few_runs_then_ever_more(rule):
    first, most = _define("GS_TEAM_SAMPLE_FIRST"), _define("GS_TEAM_SAMPLE_RUNS")
    assert 1 < first < most and 0.5 < _define("GS_TEAM_DOUBT") < 0.95
    expected = _schedule(8 * most)
    assert expected.count(1) >= 4 and expected[-most - 1:].count(1) == 1
    assert _sample_calls(rule, 1000, 10, len(expected)) == expected
    assert _sample_calls(rule, 1000, 20, first + 2) == _schedule(first + 2)  # a new shape anew
    assert _sample_calls(rule, 2000, 10, first + 2) == _schedule(first + 2)
    assert rule.serial_left() == 0  # none of it counted late


def test_a_team_that_gains_clearly_is_not_measured_on_one_thread(rule):
    """Regions at most GS_TEAM_DOUBT times the fastest thread's time alone (2 s)."""
    calls, doubt = 4 * _define("GS_TEAM_SAMPLE_RUNS"), _define("GS_TEAM_DOUBT")
    assert _sample_calls(rule, 1000, 10, calls, 2 * doubt * 0.99) == [2] * calls
    assert 1 in _sample_calls(rule, 1000, 10, calls, 2 * doubt * 1.01)


def _alone(lib, seconds: float) -> None:
    """The loop's next call, on one thread, takes ``seconds`` (from a new shape)."""
    first = _define("GS_TEAM_SAMPLE_FIRST")
    assert _sample_calls(lib, 1000, 10, first) == [2] * first
    assert lib.loop_team(2, 1000, 10) == 1
    lib.loop_note(1, seconds, 0.0, 20, 1000, 10)


def test_a_team_region_slower_than_its_loops_one_thread_run_is_late(rule):
    """A team thread that shares a core another process spins inflated both threads' processor
    time: the fastest thread's time for all segments read as high as the region's.  The loop's
    own run on one thread is a yardstick that does not."""
    _alone(rule, 1.5)
    for _ in range(2):  # regions of 1.9 s, 2 s by the fastest thread's processor time
        assert rule.loop_team(2, 1000, 10) == 2
        rule.loop_note(2, 1.9, 0.1, 20, 1000, 10)
    assert rule.serial_left() == _define("GS_LATE_TEAM_SERIAL_MIN")


def test_a_team_region_faster_than_its_loops_one_thread_run_is_judged_by_its_threads(rule):
    _alone(rule, 9.0)  # that one-thread run was slow: preempted
    for _ in range(2):  # 3 s regions, 2 s by the fastest thread's processor time: late
        assert rule.loop_team(2, 1000, 10) == 2
        rule.loop_note(2, 3.0, 0.1, 20, 1000, 10)
    assert rule.serial_left() == _define("GS_LATE_TEAM_SERIAL_MIN")


def test_a_run_on_one_thread_lowers_the_loops_time_at_once_and_raises_it_a_little(rule):
    """The first such run pays for its output's first touch (and any may be preempted): a
    later, faster one replaces it, and a slower one counts only up to the rise."""
    rise = _define("GS_TEAM_ALONE_RISE")
    assert 1.0 < rise < 2.0
    _alone(rule, 9.0)
    rule.loop_note(1, 1.5, 0.0, 20, 1000, 10)
    for _ in range(2):  # 1.6 s: late against 1.5
        rule.loop_note(2, 1.6, 0.1, 20, 1000, 10)
    assert rule.serial_left() > 0
    _run_out(rule, 10**12)
    rule.loop_note(1, 100.0, 0.0, 20, 1000, 10)  # preempted: counts as 1.5 * rise
    for seconds, late in [(1.5 * rise * 0.99, False), (1.5 * rise * 1.01, True)]:
        left = rule.serial_left()
        for _ in range(2):
            rule.loop_note(2, seconds, 1.0, 20, 1000, 10)
        assert (rule.serial_left() > left) == late, seconds
