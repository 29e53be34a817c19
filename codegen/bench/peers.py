"""The contenders: each generated backend, PyTorch (CPU, and CUDA on a GPU), textbook NumPy.

Every contender computes the same thing, once per call: the mean cross-entropy over integer
targets and its gradient with respect to the logits (forward and backward, fused or not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from gradsmith.codegen.bench import machine
from gradsmith.codegen.bench.settings import Case
from gradsmith.codegen.bench.timing import (
    Clock,
    CupyClock,
    CupyMeter,
    HostClock,
    HostMeter,
    Meter,
    TorchCudaClock,
    TorchCudaMeter,
)


class Skip(Exception):
    """This contender cannot run this case here; the message says why."""


@dataclass
class Prepared:
    call: Callable[[], Any]  # one forward + backward; returns (loss, dlogits)
    clock: Clock
    meter: Meter
    reset: Callable[[], None] | None = None


@dataclass(frozen=True)
class Contender:
    name: str  # row label
    backend: str  # the --backends name that selected it
    device: str  # "cpu" or "gpu"
    generated: bool
    prepare: Callable[[Inputs], Prepared]


def textbook_cross_entropy(logits: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max, exp, sum, divide, subtract the one-hot: the version found in course notes."""
    rows = np.arange(logits.shape[0])
    row_max = logits.max(axis=1, keepdims=True)
    exps = np.exp(logits - row_max)
    sums = exps.sum(axis=1, keepdims=True)
    probs = exps / sums
    loss = np.mean(np.log(sums[:, 0]) + row_max[:, 0] - logits[rows, target])
    probs[rows, target] -= 1
    probs /= logits.shape[0]
    return loss, probs


class Inputs:
    """Logits (standard normal, scaled by 2) and uniform targets of one case, made once, and
    the run's softcap (None: none), which every contender applies."""

    def __init__(self, case: Case, seed: int, softcap: float | None = None) -> None:
        self.case = case
        self.seed = seed
        self.softcap = softcap
        self._host: tuple[np.ndarray, np.ndarray] | None = None
        self._torch_gpu: tuple[Any, Any] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.case.n_rows, self.case.n_classes

    def host(self) -> tuple[np.ndarray, np.ndarray]:
        if self.case.dtype not in ("float32", "float64", "float16"):
            raise Skip(f"NumPy has no {self.case.dtype}")
        if self._host is None:
            rng = np.random.default_rng(self.seed)
            logits = rng.standard_normal(self.shape, dtype=np.float32)
            logits *= 2
            target = rng.integers(0, self.case.n_classes, size=self.case.n_rows, dtype=np.int64)
            self._host = (logits.astype(self.case.dtype, copy=False), target)
        return self._host

    def torch_gpu(self, torch: Any) -> tuple[Any, Any]:
        if self._torch_gpu is None:
            generator = torch.Generator(device="cuda").manual_seed(self.seed)
            logits = torch.randn(self.shape, device="cuda", generator=generator).mul_(2)
            target = torch.randint(
                0, self.case.n_classes, (self.case.n_rows,), device="cuda", generator=generator
            )
            self._torch_gpu = (logits.to(getattr(torch, self.case.dtype)), target)
        return self._torch_gpu

    def cupy_gpu(self, cupy: Any) -> tuple[Any, Any]:
        torch = machine.torch_cuda()
        if torch is not None:
            logits, target = self.torch_gpu(torch)
            if self.case.dtype == "bfloat16":
                return _cupy_bfloat16(cupy, torch, logits), cupy.from_dlpack(target)
            return cupy.from_dlpack(logits), cupy.from_dlpack(target)
        if self.case.dtype == "bfloat16":
            raise Skip("bfloat16 inputs on the GPU need PyTorch to make them")
        rng = cupy.random.default_rng(self.seed)
        logits = (rng.standard_normal(self.shape, dtype=cupy.float32) * 2).astype(self.case.dtype)
        target = rng.integers(0, self.case.n_classes, size=self.case.n_rows).astype(cupy.int64)
        return logits, target

    def release(self) -> None:
        self._host = None
        self._torch_gpu = None


def _cupy_bfloat16(cupy: Any, torch: Any, logits: Any) -> Any:
    """A CuPy bfloat16 array over a torch tensor's memory (needs ml_dtypes' bfloat16 dtype)."""
    try:
        import ml_dtypes

        bits = cupy.from_dlpack(logits.view(torch.int16))
        return bits.view(ml_dtypes.bfloat16)
    except (ImportError, TypeError, ValueError) as error:
        raise Skip(f"CuPy cannot hold bfloat16 arrays here ({error})") from error


def _generated(backend: str, device: str, *, mode: str = "new") -> Callable[[Inputs], Prepared]:
    """The generated kernel.  ``mode``: "new" returns a fresh gradient; "out" writes it into
    one buffer passed as ``out=`` (no first touch after the warm-up); "inplace" writes it over
    a copy of the logits, refilled untimed."""

    def prepare(inputs: Inputs) -> Prepared:
        from gradsmith.codegen.loading import load
        from gradsmith.codegen.registry import backends

        if inputs.case.dtype not in backends()[backend].dtypes:
            raise Skip(f"{backend} backend has no {inputs.case.dtype}")
        if device == "gpu":
            xp = machine.optional_cupy()
            if xp is None:
                raise Skip("no CUDA GPU with CuPy")
            logits, target = inputs.cupy_gpu(xp)
            clock: Clock = CupyClock(xp)
            meter: Meter = CupyMeter(xp)
        else:
            xp = np
            logits, target = inputs.host()
            clock, meter = HostClock(), HostMeter()
        try:
            kernel = load(backend, inputs.case.dtype)
        except (ImportError, OSError, RuntimeError, NotImplementedError) as error:
            raise Skip(f"{backend} backend not available ({error})") from error
        options = {} if inputs.softcap is None else {"softcap": inputs.softcap}
        if mode == "new":
            return Prepared(lambda: kernel(logits, target, **options), clock, meter)
        if mode == "out":
            out = xp.empty_like(logits)
            return Prepared(lambda: kernel(logits, target, out=out, **options), clock, meter)
        buffer = logits.copy()
        return Prepared(
            lambda: kernel(buffer, target, inplace=True, **options),
            clock,
            meter,
            reset=lambda: xp.copyto(buffer, logits),
        )

    return prepare


def softcapped(torch: Any, cross_entropy: Callable, softcap: float | None) -> Callable:
    """``cross_entropy`` of the logits softcapped as s tanh(z/s) in torch (Gemma 2's form)."""
    if softcap is None:
        return cross_entropy
    return lambda logits, target: cross_entropy(softcap * torch.tanh(logits / softcap), target)


def torch_autograd(device: str, loss_function: Callable[[Any, float | None], Callable],
                   cpu_skip: Callable[[str], str | None]) -> Callable[[Inputs], Prepared]:
    """A torch contender: ``loss_function(torch, softcap)(logits, target)`` then ``.backward()``.

    ``cpu_skip(dtype)`` is the reason a CPU case is not run, or None."""
    def prepare(inputs: Inputs) -> Prepared:
        torch = machine.optional_torch()
        if torch is None:
            raise Skip("PyTorch is not installed")
        cross_entropy = loss_function(torch, inputs.softcap)
        if device == "gpu":
            logits, target = inputs.torch_gpu(torch)
            clock: Clock = TorchCudaClock(torch)
            meter: Meter = TorchCudaMeter(torch)
        else:
            reason = cpu_skip(inputs.case.dtype)
            if reason:
                raise Skip(reason)
            host_logits, host_target = inputs.host()
            logits, target = torch.from_numpy(host_logits), torch.from_numpy(host_target)
            clock, meter = HostClock(), HostMeter()
        leaf = logits.detach().requires_grad_(True)

        def call() -> tuple[Any, Any]:
            loss = cross_entropy(leaf, target)
            loss.backward()
            return loss, leaf.grad

        def reset() -> None:
            leaf.grad = None

        return Prepared(call, clock, meter, reset)

    return prepare


def _torch(device: str) -> Callable[[Inputs], Prepared]:
    return torch_autograd(
        device, lambda torch, softcap: softcapped(torch, torch.nn.functional.cross_entropy, softcap),
        lambda dtype: "PyTorch CPU float16 cross-entropy is not a fair peer"
        if dtype == "float16" else None)


def _torch_compiled(inputs: Inputs) -> Prepared:
    """``torch.compile`` of ``F.cross_entropy`` (Inductor fuses forward and backward); the
    compilation happens in the warm-up call, before anything is timed."""
    torch = machine.optional_torch()
    if torch is None:
        raise Skip("PyTorch is not installed")
    if inputs.case.dtype not in ("float32", "float64"):
        raise Skip(f"torch.compile is not run on the CPU in {inputs.case.dtype}")
    host_logits, host_target = inputs.host()
    target = torch.from_numpy(host_target)
    leaf = torch.from_numpy(host_logits).detach().requires_grad_(True)
    compiled = torch.compile(softcapped(torch, torch.nn.functional.cross_entropy, inputs.softcap),
                             dynamic=False)

    def call() -> tuple[Any, Any]:
        loss = compiled(leaf, target)
        loss.backward()
        return loss, leaf.grad

    def reset() -> None:
        leaf.grad = None

    try:
        call()
    except Exception as error:  # Inductor needs a working C++ toolchain
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise Skip(f"torch.compile failed here ({type(error).__name__}: {message})") from error
    reset()
    return Prepared(call, HostClock(), HostMeter(), reset)


def _jax_jit(inputs: Inputs) -> Prepared:
    """``jax.jit(jax.value_and_grad(mean cross-entropy))`` on the CPU (XLA fuses it)."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError as error:
        raise Skip(f"JAX is not installed ({error})") from error
    if inputs.case.dtype != "float32":
        raise Skip(f"JAX runs float32 only unless x64 is enabled process-wide, not {inputs.case.dtype}")
    host_logits, host_target = inputs.host()

    def mean_cross_entropy(logits: Any, target: Any) -> Any:
        if inputs.softcap is not None:
            logits = inputs.softcap * jnp.tanh(logits / inputs.softcap)
        target_logit = jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]
        return jnp.mean(jax.nn.logsumexp(logits, axis=1) - target_logit)

    step = jax.jit(jax.value_and_grad(mean_cross_entropy))
    cpu = jax.devices("cpu")[0]
    logits = jax.device_put(host_logits, cpu)
    target = jax.device_put(host_target.astype(np.int32), cpu)  # JAX's default index width

    def call() -> tuple[Any, Any]:
        return jax.block_until_ready(step(logits, target))

    return Prepared(call, HostClock(), HostMeter())


def _textbook(inputs: Inputs) -> Prepared:
    if inputs.case.dtype not in ("float32", "float64"):
        raise Skip(f"textbook NumPy is not run in {inputs.case.dtype}")
    if inputs.softcap is not None:
        raise Skip("textbook NumPy is plain cross-entropy, without softcapping")
    logits, target = inputs.host()
    return Prepared(lambda: textbook_cross_entropy(logits, target), HostClock(), HostMeter())


def _single_thread(prepare: Callable[[Inputs], Prepared]) -> Callable[[Inputs], Prepared]:
    """The same contender with one OpenMP thread, the caller's setting restored after each call."""

    def prepare_one(inputs: Inputs) -> Prepared:
        prepared = prepare(inputs)
        return Prepared(machine.on_one_thread(prepared.call), prepared.clock, prepared.meter,
                        prepared.reset)

    return prepare_one


# The peers, in table order: (--backends name, row label, device, prepare, GPU only).
PEERS: list[tuple[str, str, str, Callable[[Inputs], Prepared], bool]] = [
    ("torch", "torch-cpu", "cpu", _torch("cpu"), False),
    ("torch", "torch-cuda", "gpu", _torch("gpu"), True),
    ("torch-compile", "torch-compile", "cpu", _torch_compiled, False),
    ("jax", "jax-jit", "cpu", _jax_jit, False),
    ("textbook", "textbook", "cpu", _textbook, False),
]


def contenders(
    backends: tuple[str, ...], *, gpu: bool, inplace: bool = False, single_thread: bool = False
) -> Iterator[Contender]:
    """In table order: generated backends (with ``out=``, in place, on one thread), then the peers."""
    from gradsmith.codegen.registry import backends as registered

    for backend, declared in registered().items():
        if backend not in backends:
            continue
        device = "gpu" if declared.gpu else "cpu"
        yield Contender(backend, backend, device, True, _generated(backend, device))
        if backend != "numpy":
            yield Contender(f"{backend}-out", backend, device, True, _generated(backend, device, mode="out"))
        if inplace and backend != "numpy":
            name = f"{backend}-inplace"
            yield Contender(name, backend, device, True, _generated(backend, device, mode="inplace"))
        if single_thread and device == "cpu" and backend != "numpy":
            yield Contender(f"{backend}-1thread", backend, device, True,
                            _single_thread(_generated(backend, device)))
    for backend, name, device, prepare, gpu_only in PEERS:
        if backend in backends and (gpu or not gpu_only):
            yield Contender(name, backend, device, False, prepare)
    if "gradsmith.torch" in backends:
        from gradsmith.codegen.bench import torch_peer

        yield from torch_peer.contenders(gpu)
