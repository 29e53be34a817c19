"""Fused linear + cross-entropy against naive torch (``x @ W.T + b`` then cross-entropy) on odd
sizes that no chunk divides, every option, non-uniform grad_output; gradcheck in float64;
torch.compile; bad input."""

from __future__ import annotations

import itertools

import pytest

torch = pytest.importorskip("torch")

from gradsmith.torch import LinearCrossEntropyLoss, linear_cross_entropy
from torch_naive import naive_cross_entropy

ROWS, HIDDEN, CLASSES = 4 * 47, 123, 31
OPTIONS = [
    {},
    {"ce_weight": True},
    {"ignore_index": 5},
    {"label_smoothing": 0.15, "ce_weight": True},
    {"lse_square_scale": 0.02},
    {"softcap": 2.5},
    {"lse_square_scale": 0.01, "softcap": 4.0, "label_smoothing": 0.1, "ce_weight": True},
]


def _inputs(seed: int, dtype=torch.float32, rows=ROWS, hidden=HIDDEN, classes=CLASSES,
            bias=True, probs=False):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, hidden, generator=generator, dtype=dtype)
    weight = torch.randn(classes, hidden, generator=generator, dtype=dtype) / hidden**0.5 * 3
    b = torch.randn(classes, generator=generator, dtype=dtype) if bias else None
    if probs:
        target = torch.rand(rows, classes, generator=generator, dtype=dtype).softmax(1)
    else:
        target = torch.randint(0, classes, (rows,), generator=generator)
    return x, weight, b, target, generator


def _options(raw: dict, generator, dtype, target) -> dict:
    options = dict(raw)
    if options.pop("ce_weight", False):
        options["ce_weight"] = torch.rand(CLASSES, generator=generator, dtype=dtype) + 0.5
    if "ignore_index" in options or not target.is_floating_point():
        target[::7] = options.get("ignore_index", -100)
    return options


def _naive(x, weight, b, target, options, reduction):
    logits = x @ weight.T + (0 if b is None else b)
    renamed = {("weight" if k == "ce_weight" else k): v for k, v in options.items()}
    return naive_cross_entropy(logits, target, renamed, reduction)


def _grads(loss, grad_output, tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None], grad_output)


@pytest.mark.parametrize(("number", "reduction", "bias"),
                         list(itertools.product(range(len(OPTIONS)), ("mean", "sum", "none"),
                                                (True, False))))
def test_matches_naive_torch_float32(number, reduction, bias):
    x, weight, b, target, generator = _inputs(number, bias=bias)
    options = _options(OPTIONS[number], generator, torch.float32, target)
    grad_output = (torch.rand(ROWS, generator=generator) * 2 - 0.5 if reduction == "none"
                   else torch.tensor(0.7))
    leaves = [t.clone().requires_grad_() for t in (x, weight)] + (
        [b.clone().requires_grad_()] if bias else [None])
    fused = linear_cross_entropy(leaves[0], leaves[1], target, leaves[2], reduction=reduction,
                                 chunk_size=50, **options)
    fused_grads = _grads(fused, grad_output, leaves)
    exact = [t.double().requires_grad_() if t is not None else None for t in (x, weight, b)]
    exact_options = {k: (v.double() if torch.is_tensor(v) else v) for k, v in options.items()}
    expected = _naive(*exact, target, exact_options, reduction)
    expected_grads = _grads(expected, grad_output.double(), exact)
    assert fused.shape == expected.shape and fused.dtype == torch.float32
    scale = expected.abs().max().item() + 1
    assert (fused.double() - expected).abs().max().item() < 1e-5 * scale
    for got, want in zip(fused_grads, expected_grads, strict=True):
        assert (got.double() - want).abs().max().item() < 1e-5 * (want.abs().max().item() + 1e-3)


def test_probability_targets_and_batch_dimensions():
    x, weight, b, target, generator = _inputs(11, probs=True)
    x3 = x.reshape(4, 47, HIDDEN).requires_grad_()
    fused = linear_cross_entropy(x3, weight, target.reshape(4, 47, CLASSES), b,
                                 reduction="none", label_smoothing=0.2, chunk_size=64)
    assert fused.shape == (4, 47)
    grad_output = torch.rand(4, 47, generator=generator)
    (got,) = torch.autograd.grad(fused, [x3], grad_output)
    exact = x3.detach().double().reshape(ROWS, HIDDEN).requires_grad_()
    expected = _naive(exact, weight.double(), b.double(), target.double(),
                      {"label_smoothing": 0.2}, "none")
    (want,) = torch.autograd.grad(expected, [exact], grad_output.reshape(-1).double())
    assert (fused.reshape(-1).double() - expected).abs().max().item() < 1e-5
    assert (got.reshape(ROWS, HIDDEN).double() - want).abs().max().item() < 1e-5


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_float64(reduction):
    x, weight, b, target, generator = _inputs(3, torch.float64, rows=9, hidden=5, classes=7)
    target[2] = -100
    ce_weight = torch.rand(7, generator=generator, dtype=torch.float64) + 0.5

    def loss(x, weight, b):
        return linear_cross_entropy(x, weight, target, b, ce_weight=ce_weight,
                                    reduction=reduction, label_smoothing=0.1,
                                    lse_square_scale=0.01, softcap=3.0, chunk_size=4)

    inputs = tuple(t.requires_grad_() for t in (x, weight, b))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-7)


def test_mean_over_nothing_is_nan_and_ignored_rows_get_zero():
    x, weight, b, target, _ = _inputs(4, rows=6)
    target[:] = -100
    x.requires_grad_()
    loss = linear_cross_entropy(x, weight, target, b, chunk_size=4)
    (grad,) = torch.autograd.grad(loss, [x])
    assert torch.isnan(loss)
    assert torch.equal(grad, torch.zeros_like(grad))


def test_bfloat16_accumulates_in_float32_no_worse_than_torch():
    x, weight, _, target, _ = _inputs(5, rows=96, hidden=64, bias=False)
    low = [t.to(torch.bfloat16).requires_grad_() for t in (x, weight)]
    fused = linear_cross_entropy(*low, target, chunk_size=16)
    fused_grads = torch.autograd.grad(fused, low)
    torch_low = [t.detach().clone().requires_grad_() for t in low]
    naive = _naive(*torch_low, None, target, {}, "mean")
    naive_grads = torch.autograd.grad(naive, torch_low)
    exact = [t.detach().double().requires_grad_() for t in low]
    expected = _naive(*exact, None, target, {}, "mean")
    expected_grads = torch.autograd.grad(expected, exact)
    assert fused_grads[1].dtype == torch.bfloat16
    assert abs(fused.double() - expected).item() <= abs(naive.double() - expected).item() + 1e-6
    for got, theirs, want in zip(fused_grads, naive_grads, expected_grads, strict=True):
        ours = (got.double() - want).abs().max().item()
        assert ours <= (theirs.double() - want).abs().max().item() * 1.01


def test_torch_compile_fullgraph():
    x, weight, b, target, generator = _inputs(6, rows=40, hidden=16)
    grad_output = torch.rand(40, generator=generator)

    def step(x, weight, b):
        return linear_cross_entropy(x, weight, target, b, reduction="none", softcap=5.0,
                                    chunk_size=16)

    compiled = torch.compile(step, fullgraph=True)
    for function in (step, compiled):
        leaves = [t.clone().requires_grad_() for t in (x, weight, b)]
        loss = function(*leaves)
        grads = torch.autograd.grad(loss, leaves, grad_output)
        if function is step:
            expected_loss, expected_grads = loss, grads
    assert torch.allclose(loss, expected_loss)
    for got, want in zip(grads, expected_grads, strict=True):
        assert torch.allclose(got, want)


def test_retained_graph_and_module():
    torch.manual_seed(0)
    head = LinearCrossEntropyLoss(HIDDEN, CLASSES, bias=True, label_smoothing=0.1,
                                  chunk_size=40)
    x, _, _, target, _ = _inputs(7)
    loss = head(x, target)
    weight = head.linear.weight
    first = torch.autograd.grad(loss, [weight], retain_graph=True)[0].clone()
    assert torch.equal(torch.autograd.grad(loss, [weight], retain_graph=True)[0], first)
    assert torch.allclose(torch.autograd.grad(loss, [weight], torch.tensor(2.0),
                                              retain_graph=True)[0], 2 * first)
    loss.backward(retain_graph=True)
    assert torch.equal(weight.grad, first)
    weight.grad.zero_()  # as zero_grad(set_to_none=False) does: the saved gradient is intact
    loss.backward()
    assert torch.equal(weight.grad, first)
    expected = torch.nn.functional.cross_entropy(head.linear(x), target, label_smoothing=0.1)
    assert abs(loss.item() - expected.item()) < 1e-5


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"reduction": "avg"}, ValueError, "reduction"),
    ({"label_smoothing": 1.5}, ValueError, "label_smoothing"),
    ({"softcap": 0.0}, ValueError, "softcap"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"ce_weight": torch.ones(3)}, ValueError, "ce_weight"),
    ({"accum_dtype": torch.int32}, ValueError, "accum_dtype"),
    ({"bias": torch.ones(4)}, ValueError, "bias"),
])
def test_bad_input_names_the_argument(kwargs, error, match):
    x, weight, _, target, _ = _inputs(8, rows=6, bias=False)
    with pytest.raises(error, match=match):
        linear_cross_entropy(x, weight, target, **kwargs)


def test_bad_shapes_and_targets():
    x, weight, _, target, _ = _inputs(9, rows=6, bias=False)
    with pytest.raises(ValueError, match="weight must have shape"):
        linear_cross_entropy(x, weight[:, :-1], target)
    with pytest.raises(ValueError, match="target"):
        linear_cross_entropy(x, weight, target[:-1])
    target[2] = CLASSES
    with pytest.raises(ValueError, match=r"target\[2\]"):
        linear_cross_entropy(x, weight, target)


def test_linear_bench_reports_time_and_memory_beside_naive():
    from gradsmith.codegen.bench.linear import format_linear, run_linear

    report = run_linear([(64, 16, 100)], contenders=("gradsmith", "naive"), repeat=1)
    rows = {row["name"]: row for row in report["results"]}
    assert {row["status"] for row in rows.values()} == {"ok"}
    assert abs(rows["gradsmith"]["loss"] - rows["naive"]["loss"]) < 1e-5
    assert all(row["ms"] > 0 and row["extra_peak_bytes"] >= -(1 << 20) for row in rows.values())
    table = format_linear(report)
    assert "64x16x100" in table and "memory vs naive" in table and "VmHWM" in table


@pytest.mark.parametrize("spec", ["4096x1024", "0x1x2", "axbxc"])
def test_linear_bench_bad_shape_is_one_line(spec, capsys):
    from gradsmith.codegen.cli import main

    assert main(["bench", "--linear", spec]) == 2
    error = capsys.readouterr().err.strip()
    assert "--linear" in error and len(error.splitlines()) == 1


def test_frozen_weight_and_inference():
    x, weight, b, target, _ = _inputs(12, rows=50)
    x.requires_grad_()
    loss = linear_cross_entropy(x, weight, target, b, chunk_size=16)
    (grad,) = torch.autograd.grad(loss, [x])
    exact = x.detach().double().requires_grad_()
    (want,) = torch.autograd.grad(_naive(exact, weight.double(), b.double(), target, {}, "mean"),
                                  [exact])
    assert (grad.double() - want).abs().max().item() < 1e-6
    with torch.no_grad():
        assert torch.allclose(linear_cross_entropy(x, weight, target, b), loss.detach())
