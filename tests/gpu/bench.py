"""The GPU benchmark of tests/gpu/run.sh: gradsmith.torch against torch eager, torch.compile'd
F.cross_entropy and Liger-Kernel (when importable), forward + backward, mean loss, at
16384 x 131072 and 8192 x 256000 in float32 and bfloat16; medians of CUDA-event timings."""

from __future__ import annotations

import statistics
import sys

import gradsmith.torch as gt
import torch
import torch.nn.functional as F

SHAPES = ((16384, 131072), (8192, 256000))
DTYPES = (torch.float32, torch.bfloat16)
REPEAT = 5


def _contenders():
    yield "gradsmith.torch", lambda x, t: gt.cross_entropy(x, t, check_targets=False)
    yield "gradsmith.torch-inplace", lambda x, t: gt.cross_entropy(x * 1, t, inplace_backward=True,
                                                                   check_targets=False)
    yield "torch-eager", F.cross_entropy
    yield "torch-compile", torch.compile(F.cross_entropy)
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ImportError as error:
        print(f"liger-kernel: not importable ({error})")
    else:
        yield "liger-kernel", LigerCrossEntropyLoss()


def _time_ms(function, logits, target) -> tuple[float, float]:
    def step():
        leaf = logits.detach().requires_grad_()
        function(leaf, target).backward()

    step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(REPEAT):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2**20


def main() -> int:
    print(f"GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}; median of {REPEAT}")
    print(f"{'shape':>13} {'dtype':>9} {'contender':>24} {'ms':>9} {'peak MiB':>9} {'vs eager':>9}")
    for n, classes in SHAPES:
        for dtype in DTYPES:
            logits = torch.randn(n, classes, device="cuda", dtype=dtype)
            target = torch.randint(0, classes, (n,), device="cuda")
            results = {}
            for name, function in _contenders():
                try:
                    results[name] = _time_ms(function, logits, target)
                except Exception as error:  # noqa: BLE001  (a peer that cannot run is reported)
                    print(f"{n}x{classes} {dtype}: {name} failed: {type(error).__name__}: {error}")
                torch.cuda.empty_cache()
            eager = results.get("torch-eager", (float("nan"),))[0]
            for name, (ms, peak) in results.items():
                print(f"{n:>6}x{classes:<6} {str(dtype)[6:]:>9} {name:>24} {ms:9.2f} {peak:9.0f} "
                      f"{eager / ms:8.2f}x")
            del logits, target
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
