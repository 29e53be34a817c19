"""Gradient-sized CPU buffers on transparent huge pages.

A fresh N x C buffer from torch's CPU allocator arrives as untouched 4 KiB pages, and the kernel
that first writes it pays one page fault per page; at 4096 x 32000 float32 that costs more than
the kernel itself.  NumPy advises the kernel to back large arrays with huge pages; torch does so
only under ``THP_MEM_ALLOC_ENABLE=1``.  ``empty`` gives the same advice for the buffers the
kernels write, before anything touches them.  It is advice only: where transparent huge pages
are off, or outside Linux, nothing changes.
"""

from __future__ import annotations

import ctypes
import sys
from functools import cache

import torch

_HUGE_PAGE = 2 << 20
_MADV_HUGEPAGE = 14
_ADVISED_BYTES = 4 << 20  # NumPy's threshold for the same advice


@cache
def _madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def advise_huge_pages(tensor: torch.Tensor) -> None:
    """Ask for huge pages under the whole 2 MiB pages of a large CPU tensor's memory."""
    size = tensor.numel() * tensor.element_size()
    madvise = _madvise()
    if tensor.device.type != "cpu" or size < _ADVISED_BYTES or madvise is None:
        return
    start = tensor.data_ptr()
    first = -(-start // _HUGE_PAGE) * _HUGE_PAGE
    last = (start + size) // _HUGE_PAGE * _HUGE_PAGE
    if last > first:
        madvise(first, last - first, _MADV_HUGEPAGE)  # refused advice changes nothing


def empty(shape, *, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor:
    """``torch.empty``, with large CPU buffers advised onto huge pages before first touch."""
    tensor = torch.empty(shape, dtype=dtype, device=device)
    advise_huge_pages(tensor)
    return tensor
