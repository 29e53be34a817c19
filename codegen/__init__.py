"""Turn the kernel spec of ``derive`` into NumPy, C and CUDA source, and load what was emitted."""

from codegen.loading import load

__all__ = ["load"]
