"""gradsmith's PyTorch ops (needs torch): the generated kernels with autograd."""

from gradsmith.codegen.torch_op.linear import LinearCrossEntropyLoss, linear_cross_entropy
from gradsmith.codegen.torch_op.vocab_parallel import (
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
)

__all__ = [
    "LinearCrossEntropyLoss",
    "linear_cross_entropy",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]
