"""gradsmith's cross-entropy as a PyTorch op: ``cross_entropy`` and ``CrossEntropyLoss``, drop-in
for ``torch.nn.functional.cross_entropy`` and ``torch.nn.CrossEntropyLoss`` (needs torch)."""

from gradsmith.codegen.torch_op.functional import cross_entropy
from gradsmith.codegen.torch_op.kernel import fused_cross_entropy
from gradsmith.codegen.torch_op.modules import CrossEntropyLoss

__all__ = ["CrossEntropyLoss", "cross_entropy", "fused_cross_entropy"]
