"""Vocab-parallel cross-entropy on gloo process groups of 2 and 4 ranks on 127.0.0.1, against
single-process F.cross_entropy on the concatenated logits; collectives counted; a rank that
disagrees gives a ValueError on every rank, not a hang."""

from __future__ import annotations

import datetime
import json
import multiprocessing
import socket
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist
from gradsmith.derive import vocab_parallel
from torch_naive import naive_cross_entropy

ROWS, CLASSES = 7, 13
GROUP_SECONDS = 30
JOIN_SECONDS = 120
OPTIONS = [
    {},
    {"label_smoothing": 0.2},
    {"weight": True, "label_smoothing": 0.1},
    {"weight": True, "ignore_index": 4},
    {"lse_square_scale": 0.05},
    {"softcap": 1.5, "label_smoothing": 0.3},
]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    from gradsmith.torch import vocab_parallel_cross_entropy

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=GROUP_SECONDS))
    counts = {"all_reduce": 0, "all_gather": 0}
    for name in counts:
        original = getattr(dist, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        setattr(dist, name, counted)
    report = {"errors": [], "collectives": []}
    try:
        generator = torch.Generator().manual_seed(5)
        for number, raw in enumerate(OPTIONS):
            for reduction in ("mean", "sum", "none"):
                logits = torch.randn(ROWS, CLASSES, generator=generator, dtype=torch.float64) * 3
                target = torch.randint(0, CLASSES, (ROWS,), generator=generator)
                options = dict(raw)
                if options.pop("weight", False):
                    options["weight"] = torch.rand(CLASSES, generator=generator,
                                                   dtype=torch.float64) + 0.5
                ignore = options.get("ignore_index", -100)
                target[1] = ignore
                grad_output = (torch.rand(ROWS, generator=generator, dtype=torch.float64)
                               if reduction == "none" else torch.tensor(1.7, dtype=torch.float64))
                whole = logits.clone().requires_grad_()
                expected = naive_cross_entropy(whole, target, options, reduction)
                expected.backward(grad_output)
                shard = torch.tensor_split(logits, world, dim=1)[rank].clone().requires_grad_()
                before = dict(counts)
                loss = vocab_parallel_cross_entropy(shard, target, reduction=reduction, **options)
                forward = {k: counts[k] - before[k] for k in counts}
                loss.backward(grad_output)
                backward = {k: counts[k] - before[k] - forward[k] for k in counts}
                report["collectives"].append([forward, backward])
                own = torch.tensor_split(whole.grad, world, dim=1)[rank]
                report["errors"].append([number, reduction, float((loss - expected).abs().max()),
                                         float((shard.grad - own).abs().max())])
        report["linear"] = _linear_case(rank, world, counts)
        report["minus_inf"] = _minus_inf_case(rank, world)
        try:
            smoothing = 0.1 if rank == world - 1 else 0.0
            vocab_parallel_cross_entropy(torch.randn(ROWS, 3), torch.zeros(ROWS, dtype=torch.int64),
                                         label_smoothing=smoothing)
            report["disagreement"] = "no error"
        except ValueError as error:
            report["disagreement"] = str(error)
        try:
            rows = ROWS + (1 if rank == 0 else 0)
            vocab_parallel_cross_entropy(torch.randn(rows, 3), torch.zeros(rows, dtype=torch.int64))
            report["rows"] = "no error"
        except ValueError as error:
            report["rows"] = str(error)
    finally:
        Path(out, f"{rank}.json").write_text(json.dumps(report))
        dist.destroy_process_group()


def _minus_inf_case(rank: int, world: int) -> list:
    """-inf logits against F.cross_entropy: row 1's first shard all -inf, row 2's target at -inf,
    row 3 all -inf (NaN)."""
    from gradsmith.torch import vocab_parallel_cross_entropy

    generator = torch.Generator().manual_seed(9)
    logits = torch.randn(ROWS, CLASSES, generator=generator, dtype=torch.float64)
    target = torch.randint(0, CLASSES, (ROWS,), generator=generator)
    first = torch.tensor_split(torch.arange(CLASSES), world)[0]
    logits[0, 2] = logits[1, first] = logits[2, 5] = logits[3] = -torch.inf
    target[1], target[2] = CLASSES - 1, 5
    results = []
    for options in ({}, {"label_smoothing": 0.1}):
        whole = logits.clone().requires_grad_()
        expected = torch.nn.functional.cross_entropy(whole, target, reduction="none", **options)
        expected.sum().backward()
        shard = torch.tensor_split(logits, world, dim=1)[rank].clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(shard, target, reduction="none", **options)
        loss.sum().backward()
        own = torch.tensor_split(whole.grad, world, dim=1)[rank]
        results.append([torch.allclose(actual, wanted, rtol=1e-12, atol=1e-12, equal_nan=True)
                        for actual, wanted in ((loss, expected), (shard.grad, own))])
    return results


def _linear_case(rank: int, world: int, counts: dict) -> dict:
    """The head sharded by vocabulary: loss and the gradients of input, weight rows and bias."""
    from gradsmith.torch import vocab_parallel_linear_cross_entropy

    generator = torch.Generator().manual_seed(9)
    x = torch.randn(ROWS, 5, generator=generator, dtype=torch.float64)
    weight = torch.randn(CLASSES, 5, generator=generator, dtype=torch.float64)
    bias = torch.randn(CLASSES, generator=generator, dtype=torch.float64)
    target = torch.randint(0, CLASSES, (ROWS,), generator=generator)
    grad_output = torch.rand(ROWS, generator=generator, dtype=torch.float64)
    whole = [t.clone().requires_grad_() for t in (x, weight, bias)]
    expected = naive_cross_entropy(whole[0] @ whole[1].T + whole[2], target,
                                   {"label_smoothing": 0.1}, "none")
    expected.backward(grad_output)
    local = [x.clone().requires_grad_()] + [
        torch.tensor_split(t, world)[rank].clone().requires_grad_() for t in (weight, bias)]
    before = dict(counts)
    loss = vocab_parallel_linear_cross_entropy(*local[:2], target, local[2], reduction="none",
                                               label_smoothing=0.1)
    forward = {k: counts[k] - before[k] for k in counts}
    loss.backward(grad_output)
    own = [whole[0].grad] + [torch.tensor_split(t.grad, world)[rank] for t in whole[1:]]
    return {"loss": float((loss - expected).abs().max()),
            "grads": [float((a.grad - b).abs().max()) for a, b in zip(local, own, strict=True)],
            "forward": forward,
            "backward": {k: counts[k] - before[k] - forward[k] for k in counts}}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module", params=[2, 4])
def reports(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"world{world}")
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    processes = [context.Process(target=_worker, args=(rank, world, port, str(out)))
                 for rank in range(world)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(JOIN_SECONDS)
    alive = [process for process in processes if process.is_alive()]
    for process in alive:
        process.kill()
        process.join()
    assert not alive, f"{len(alive)} of {world} ranks still running after {JOIN_SECONDS} s"
    assert all(process.exitcode == 0 for process in processes), [p.exitcode for p in processes]
    return world, [json.loads(Path(out, f"{rank}.json").read_text()) for rank in range(world)]


def test_equals_single_process_cross_entropy(reports):
    world, per_rank = reports
    for rank, report in enumerate(per_rank):
        assert len(report["errors"]) == len(OPTIONS) * 3
        for number, reduction, loss_error, grad_error in report["errors"]:
            where = f"rank {rank}/{world}, options {OPTIONS[number]}, {reduction}"
            assert loss_error < 1e-12, where
            assert grad_error < 1e-12, where


def test_two_all_reduces_forward_none_backward(reports):
    _, per_rank = reports
    for report in per_rank:
        for forward, backward in report["collectives"]:
            assert forward == {"all_reduce": 2, "all_gather": 1}
            assert backward == {"all_reduce": 0, "all_gather": 0}


def test_disagreeing_rank_is_a_clear_error_on_every_rank(reports):
    _, per_rank = reports
    for report in per_rank:
        assert "disagree on label_smoothing" in report["disagreement"]
        assert "disagree on rows" in report["rows"]


def test_vocab_parallel_linear_head(reports):
    _, per_rank = reports
    for report in per_rank:
        linear = report["linear"]
        assert linear["loss"] < 1e-12 and max(linear["grads"]) < 1e-12
        assert linear["forward"] == {"all_reduce": 2, "all_gather": 1}
        assert linear["backward"] == {"all_reduce": 1, "all_gather": 0}


def test_minus_inf_logits_as_pytorch_has_them(reports):
    _, per_rank = reports
    for report in per_rank:
        assert report["minus_inf"] == [[True, True], [True, True]]


def test_merge_identity_is_proven_for_every_spec_variant():
    results = vocab_parallel.verify_all_merges()
    assert len(results) == 8 * 6
    assert vocab_parallel.merged_loss().method == "numeric"


def test_needs_a_process_group():
    from gradsmith.torch import vocab_parallel_cross_entropy

    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    with pytest.raises(RuntimeError, match="init_process_group"):
        vocab_parallel_cross_entropy(torch.randn(2, 3), torch.zeros(2, dtype=torch.int64))
