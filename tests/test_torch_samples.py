"""PyTorch's own sample inputs, run as they are through gradsmith.torch: every sample of the
OpInfo ``nn.functional.cross_entropy`` and of the ``CrossEntropyLoss`` ModuleInfo (error inputs
included), float32 and float64 on CPU, loss and input gradient against torch.

The README's one documented difference that these samples reach: a probability target that
requires grad is refused (gradsmith does not differentiate with respect to targets); each such
sample asserts the refusal and is then compared with the target detached.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (optional test dependency)")
pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")
import gradsmith.torch as gt
from torch.testing._internal.common_methods_invocations import op_db
from torch.testing._internal.common_modules import module_db

DTYPES = (torch.float32, torch.float64)
TOLERANCE = {torch.float32: {"rtol": 2e-5, "atol": 2e-5}, torch.float64: {"rtol": 1e-10, "atol": 1e-12}}
OP = next(op for op in op_db if op.name == "nn.functional.cross_entropy")
MODULE = next(m for m in module_db if m.module_cls is torch.nn.CrossEntropyLoss)


def _upstream(loss: torch.Tensor, seed: int) -> torch.Tensor:
    # Non-uniform for reduction "none", so that a per-row grad_output error shows.
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(loss.shape, dtype=loss.dtype, generator=generator) + 0.5


def _compare(ours, theirs, input: torch.Tensor, seed: int, what: str) -> None:
    """Loss and input gradient of two callables of ``input``."""
    mine = input.detach().clone().requires_grad_()
    reference = input.detach().clone().requires_grad_()
    loss, expected = ours(mine), theirs(reference)
    assert loss.shape == expected.shape, what
    torch.testing.assert_close(loss, expected, **TOLERANCE[input.dtype], msg=what)
    upstream = _upstream(expected, seed)
    loss.backward(upstream)
    expected.backward(upstream)
    torch.testing.assert_close(mine.grad, reference.grad, **TOLERANCE[input.dtype], msg=what)


def _probability_target_refused(call, target: torch.Tensor) -> bool:
    if not (target.dtype.is_floating_point and target.requires_grad):
        return False
    with pytest.raises(ValueError, match="does not differentiate with respect to probability"):
        call()
    return True


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_opinfo_samples(dtype):
    samples = list(OP.sample_inputs("cpu", dtype, requires_grad=True))
    assert len(samples) > 20
    refused = 0
    for number, sample in enumerate(samples):
        target, *rest = sample.args
        what = f"sample {number}: {tuple(sample.input.shape)} {sample.kwargs}"
        refused += _probability_target_refused(
            lambda s=sample: gt.cross_entropy(s.input, *s.args, **s.kwargs), target)
        target = target.detach()
        _compare(lambda x, t=target, r=rest, s=sample: gt.cross_entropy(x, t, *r, **s.kwargs),
                 lambda x, t=target, r=rest, s=sample: torch.nn.functional.cross_entropy(
                     x, t, *r, **s.kwargs),
                 sample.input, number, what)
    assert refused > 0  # the documented difference was exercised, and asserted


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_module_info_inputs(dtype):
    inputs = MODULE.module_inputs_func(MODULE, device="cpu", dtype=dtype, requires_grad=True,
                                       training=True)
    assert len(inputs) > 50
    for number, module_input in enumerate(inputs):
        args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
        ours, theirs = gt.CrossEntropyLoss(*args, **kwargs), torch.nn.CrossEntropyLoss(*args, **kwargs)
        input, target = module_input.forward_input.args
        target = target.detach()
        _compare(lambda x, t=target, m=ours: m(x, t), lambda x, t=target, m=theirs: m(x, t),
                 input, number, f"{module_input.desc}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_module_error_inputs_raise(dtype):
    errors = MODULE.module_error_inputs_func(MODULE, device="cpu", dtype=dtype,
                                             requires_grad=True, training=True)
    assert errors
    for error in errors:
        module_input = error.module_error_input
        with pytest.raises((TypeError, ValueError), match=r"target|weight|label_smoothing|ignore_index"):
            module = gt.CrossEntropyLoss(*module_input.constructor_input.args,
                                         **module_input.constructor_input.kwargs)
            module(*module_input.forward_input.args, **module_input.forward_input.kwargs)
