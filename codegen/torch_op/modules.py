"""``CrossEntropyLoss`` (``torch.nn.CrossEntropyLoss`` on gradsmith's fused kernels),
``FocalLoss`` and ``DistillKLLoss``."""

from __future__ import annotations

import torch
from gradsmith.codegen.torch_op.functional import cross_entropy
from gradsmith.codegen.torch_op.row_loss_op import distill_kl, focal_loss
from torch import Tensor


class CrossEntropyLoss(torch.nn.Module):
    """``torch.nn.CrossEntropyLoss`` with z-loss (``lse_square_scale``) and ``softcap``;
    ``weight`` is a buffer, as in PyTorch."""

    def __init__(self, weight: Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0,
                 lse_square_scale: float = 0.0, softcap: float | None = None,
                 inplace_backward: bool = False) -> None:
        super().__init__()
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.lse_square_scale = lse_square_scale
        self.softcap = softcap
        self.inplace_backward = inplace_backward

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(input, target, self.weight, self.ignore_index, self.reduction,
                             self.label_smoothing, lse_square_scale=self.lse_square_scale,
                             softcap=self.softcap, inplace_backward=self.inplace_backward)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, "
                f"lse_square_scale={self.lse_square_scale}, softcap={self.softcap}")


class FocalLoss(torch.nn.Module):
    """``focal_loss`` as a module; ``alpha`` is a buffer."""

    def __init__(self, gamma: float = 2.0, alpha: Tensor | None = None, ignore_index: int = -100,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.register_buffer("alpha", alpha)
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return focal_loss(input, target, self.gamma, self.alpha, self.ignore_index,
                          self.reduction)

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma}, ignore_index={self.ignore_index}, "
                f"reduction={self.reduction!r}")


class DistillKLLoss(torch.nn.Module):
    """``distill_kl`` as a module: forward(student_logits, teacher_logits)."""

    def __init__(self, temperature: float = 1.0, reduction: str = "batchmean") -> None:
        super().__init__()
        self.temperature = temperature
        self.reduction = reduction

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        return distill_kl(student_logits, teacher_logits, self.temperature, self.reduction)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, reduction={self.reduction!r}"
