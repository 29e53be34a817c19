"""gradsmith: softmax losses derived and proven with SymPy, emitted as verified NumPy, C and
CUDA kernels.

``gradsmith.load(backend, dtype)`` returns a kernel with the semantics of
``torch.nn.functional.cross_entropy``; ``gradsmith.derive`` holds the math and
``gradsmith.codegen`` turns it into code.  ``gradsmith.empty_cache()`` hands back the large
gradient blocks the CPU kernels keep for reuse.
"""

from gradsmith.codegen.buffers import empty_cache
from gradsmith.codegen.loading import load

__version__ = "0.2.0"
__all__ = ["__version__", "empty_cache", "load"]
