"""The fresh gradients the CPU kernels write: uninitialised arrays placed as far into a cache
line as their logits, and at sizes where the C library maps new pages for every block,
recycled from ones freed earlier.

glibc's malloc serves blocks of 32 MiB and more with a fresh ``mmap`` and unmaps them when they
are freed, so every such gradient paid for the kernel zeroing its pages on first touch: about a
third of a call at 4096 x 32000 and 1024 x 131072 (float32, two threads, AMD EPYC Zen 4,
alternated runs: 52-62 ms against 31-42 into a buffer written before).  So a freed block of that
size is kept, and the next gradient of exactly its size is carved from it.  At most
``KEEP_BLOCKS`` blocks are kept; :func:`empty_cache` hands them back to the system.  A block
is kept only once the last array over it (a view, a ``torch.from_numpy`` tensor) is gone.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from gradsmith.codegen.native import address

CACHE_LINE_BYTES = 64
# glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX): smaller freed
# blocks go back to the heap, which malloc already reuses without new pages.
RECYCLE_BYTES = 32 << 20
# Two: a loop that keeps its last gradient while the next is made (``loss, g = f(x, t)``)
# takes turns between two blocks.
KEEP_BLOCKS = 2

_kept: list[np.ndarray] = []
# Reentrant: a block can come back (a collected array) while this thread holds the lock.
_lock = threading.RLock()


class _Lease:
    """The owner of an array carved from a recycled block: NumPy keeps it as the array's
    ``base``, and when the last array over it goes, the block is kept for the next gradient."""

    def __init__(self, block: np.ndarray, offset: int, shape: tuple[int, ...], dtype: np.dtype):
        self._block = block
        self.__array_interface__ = {"data": (address(block) + offset, False), "shape": shape,
                                    "typestr": dtype.str, "version": 3}

    def __del__(self) -> None:
        _give_back(self._block)


def _give_back(block: np.ndarray) -> None:
    with _lock:
        _kept.append(block)
        del _kept[:-KEEP_BLOCKS]


def _take(nbytes: int) -> np.ndarray | None:
    with _lock:
        while True:
            found = next(((index, block) for index, block in enumerate(_kept)
                          if block.nbytes == nbytes), None)
            if found is None:
                return None
            index, block = found
            # A collection while searching may have given a block back and dropped another.
            if index < len(_kept) and _kept[index] is block:
                del _kept[index]
                return block


def cached_bytes() -> int:
    """The bytes of the gradient blocks kept for reuse."""
    with _lock:
        return sum(block.nbytes for block in _kept)


def empty_cache() -> None:
    """Hands every kept gradient block back to the system (its memory leaves the process when
    nothing else holds it)."""
    with _lock:
        _kept.clear()


def empty_rows(shape: tuple[int, ...], dtype, like_address: int) -> np.ndarray:
    """An uninitialised C-contiguous array of ``shape`` for a gradient the kernels write, its
    data as far into a cache line as the logits' (at ``like_address``).  NumPy starts a large
    block 16 bytes into a line and torch at a line's start; a fresh gradient placed otherwise than
    its logits took 3-8% longer at 4096 x 32000, 1024 x 131072 and 8192 x 1000 (float32, AMD EPYC
    Zen 4, two threads), except at 8192 x 1000 with logits 16 bytes in (3% faster on a line).
    From ``RECYCLE_BYTES`` up, a kept block of the same size is used if there is one."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    nbytes = (count + CACHE_LINE_BYTES // dtype.itemsize) * dtype.itemsize
    if nbytes < RECYCLE_BYTES:
        block = np.empty(count + CACHE_LINE_BYTES // dtype.itemsize, dtype=dtype)
        start = (like_address - address(block)) % CACHE_LINE_BYTES // dtype.itemsize
        return block[start:start + count].reshape(shape)
    block = _take(nbytes)
    if block is None:
        block = np.empty(nbytes, dtype=np.uint8)
    offset = (like_address - address(block)) % CACHE_LINE_BYTES // dtype.itemsize * dtype.itemsize
    return np.asarray(_Lease(block, offset, tuple(shape), dtype))
