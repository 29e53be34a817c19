"""The CPU kernels' fresh gradients: placed as far into a cache line as their logits, and large
ones recycled from freed blocks, never while an array over a block lives."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from gradsmith.codegen import buffers
from gradsmith.codegen.bench.timing import HostMeter
from gradsmith.codegen.loading import load
from gradsmith.codegen.native import address

# 2048 x 4096 float32: 32 MiB, the smallest gradient that is recycled.
LARGE = (2048, 4096)


@pytest.fixture(autouse=True)
def no_kept_blocks():
    buffers.empty_cache()
    yield
    buffers.empty_cache()


@pytest.fixture(scope="module")
def large_call():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(LARGE, dtype=np.float32)
    target = rng.integers(0, LARGE[1], LARGE[0])
    return load("c", "float32"), logits, target


def test_a_freed_gradient_block_is_used_again_for_the_next_gradient_of_its_size(large_call):
    kernel, logits, target = large_call
    _, first = kernel(logits, target)
    where = address(first)
    expected = first.copy()
    del first
    assert buffers.cached_bytes() >= logits.nbytes
    _, second = kernel(logits, target)
    assert address(second) == where and buffers.cached_bytes() == 0
    np.testing.assert_array_equal(second, expected)  # every element written again


def test_a_gradient_that_is_still_held_is_never_handed_out_again(large_call):
    kernel, logits, target = large_call
    _, first = kernel(logits, target)
    kept = first[1:]  # a view holds the block as the array did
    del first
    _, second = kernel(logits, target)
    assert not np.shares_memory(kept, second)
    del second
    del kept
    assert buffers.cached_bytes() == 2 * (logits.nbytes + buffers.CACHE_LINE_BYTES)


def test_a_torch_tensor_over_a_gradient_holds_its_block(large_call):
    torch = pytest.importorskip("torch")
    kernel, logits, target = large_call
    tensor = torch.from_numpy(kernel(logits, target)[1])
    assert buffers.cached_bytes() == 0
    _, other = kernel(logits, target)
    assert not np.shares_memory(tensor.numpy(), other)
    del tensor
    assert buffers.cached_bytes() > 0


def test_at_most_keep_blocks_are_kept_and_empty_cache_hands_them_back():
    like = np.empty(16, np.float32)
    arrays = [buffers.empty_rows(LARGE, np.float32, address(like)) for _ in range(4)]
    assert len({address(array) for array in arrays}) == 4
    size = arrays[0].nbytes + buffers.CACHE_LINE_BYTES
    del arrays
    assert buffers.cached_bytes() == buffers.KEEP_BLOCKS * size
    buffers.empty_cache()
    assert buffers.cached_bytes() == 0


def test_a_block_of_another_size_is_not_used():
    like = np.empty(16, np.float32)
    first = buffers.empty_rows(LARGE, np.float32, address(like))
    where = address(first)
    del first
    other = buffers.empty_rows((LARGE[0] + 1, LARGE[1]), np.float32, address(like))
    assert address(other) != where and buffers.cached_bytes() > 0


def test_small_gradients_are_left_to_malloc():
    like = np.empty(16, np.float32)
    small = buffers.empty_rows((1024, 4096), np.float32, address(like))  # 16 MiB
    assert isinstance(small.base, np.ndarray)
    del small
    assert buffers.cached_bytes() == 0


@pytest.mark.parametrize("shape", [(3, 5), LARGE])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_gradient_lies_as_far_into_a_cache_line_as_its_logits(shape, dtype):
    itemsize = np.dtype(dtype).itemsize
    block = np.empty(64, dtype)
    for skip in range(0, buffers.CACHE_LINE_BYTES, itemsize):
        like = address(block) + skip
        gradient = buffers.empty_rows(shape, dtype, like)
        assert gradient.shape == shape and gradient.dtype == dtype
        assert gradient.flags.c_contiguous and gradient.flags.writeable
        assert (address(gradient) - like) % buffers.CACHE_LINE_BYTES == 0
        del gradient  # large ones come back at each offset in turn


def test_the_bench_counts_a_recycled_gradient_as_new_memory(large_call):
    """Its peak memory is a fresh call's: the gradient's own 32 MiB, not a kept block's 0."""
    kernel, logits, target = large_call
    for _ in range(3):
        kernel(logits, target)
    assert buffers.cached_bytes() > 0
    assert HostMeter().peak_bytes(lambda: kernel(logits, target)) >= logits.nbytes


def test_a_process_that_ends_holding_gradients_ends_cleanly():
    code = ("import numpy as np\n"
            "from gradsmith.codegen import buffers\n"
            "held = buffers.empty_rows((2048, 4096), np.float32, 0)\n"
            "freed = buffers.empty_rows((2048, 4096), np.float32, 0)\n"
            "del freed\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_threads_never_share_a_block_they_hold():
    """Each thread marks each gradient it holds; a block handed to two holders would lose one
    holder's mark to the other's."""
    import threading

    like = np.empty(16, np.float32)
    failures = []

    def work(mark: int) -> None:
        for _ in range(30):
            held = [buffers.empty_rows(LARGE, np.float32, address(like)) for _ in range(3)]
            for index, array in enumerate(held):
                array[0, :4] = 10 * mark + index
            for index, array in enumerate(held):
                if not (array[0, :4] == 10 * mark + index).all():
                    failures.append(mark)

    threads = [threading.Thread(target=work, args=(mark,)) for mark in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert buffers.cached_bytes() <= buffers.KEEP_BLOCKS * (LARGE[0] * LARGE[1] * 4 + 64)
