"""gradsmith's PyTorch ops (needs torch): ``cross_entropy`` and ``CrossEntropyLoss``, drop-in
for ``torch.nn.functional.cross_entropy`` and ``torch.nn.CrossEntropyLoss``; fused linear and
vocab-parallel cross-entropy for language models; ``focal_loss`` and ``distill_kl``,
and ``row_loss`` for any registered row loss by name."""

from gradsmith.codegen.torch_op.functional import cross_entropy
from gradsmith.codegen.torch_op.kernel import fused_cross_entropy
from gradsmith.codegen.torch_op.linear import LinearCrossEntropyLoss, linear_cross_entropy
from gradsmith.codegen.torch_op.modules import CrossEntropyLoss, DistillKLLoss, FocalLoss
from gradsmith.codegen.torch_op.row_loss_op import distill_kl, focal_loss, row_loss
from gradsmith.codegen.torch_op.vocab_parallel import (
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
)

__all__ = [
    "CrossEntropyLoss",
    "DistillKLLoss",
    "FocalLoss",
    "LinearCrossEntropyLoss",
    "cross_entropy",
    "distill_kl",
    "focal_loss",
    "fused_cross_entropy",
    "linear_cross_entropy",
    "row_loss",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]
