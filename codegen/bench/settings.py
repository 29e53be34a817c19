"""What one benchmark run measures: shapes, dtypes, contenders, repeats."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gradsmith.codegen.registry import names
from gradsmith.codegen.registry import parse_backends as parse_names

GENERATED = names()
PEERS = ("torch", "torch-compile", "jax", "gradsmith.torch", "textbook")
BACKENDS = GENERATED + PEERS
DTYPES = ("float32", "float64", "bfloat16", "float16")

# Shapes (N, C) measured everywhere, and the large ones added on a GPU.
CPU_SHAPES = ((65536, 10), (262144, 4), (8192, 1000), (4096, 32000), (1024, 131072))
GPU_SHAPES = ((16384, 131072), (8192, 256000))
GPU_DTYPES = ("float32", "bfloat16")

_SHAPE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class Case:
    """One (shape, dtype) point; ``gpu_only`` cases are too large to be worth a CPU run."""

    n_rows: int
    n_classes: int
    dtype: str
    gpu_only: bool = False

    @property
    def label(self) -> str:
        return f"{self.n_rows}x{self.n_classes}"


@dataclass(frozen=True)
class Settings:
    cases: tuple[Case, ...]
    backends: tuple[str, ...] = BACKENDS
    repeat: int = 5
    warmup: int = 1
    threads: int | None = None
    seed: int = 0
    progress: bool = True
    inplace: bool = False  # also time the C and CUDA kernels writing dlogits over the logits
    busy: bool = False  # keep one core busy with another process, and time the C kernel on one thread
    softcap: float | None = None  # every contender softcaps the logits, s tanh(z/s), before the softmax


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``"4096x32000,65536x10"`` -> ((4096, 32000), (65536, 10)); N >= 1 and C >= 1."""
    shapes = []
    for part in text.split(","):
        match = _SHAPE.match(part)
        if not match:
            raise ValueError(f"--shapes takes comma-separated NxC pairs such as 4096x32000, got {part.strip()!r}")
        n_rows, n_classes = int(match.group(1)), int(match.group(2))
        if n_rows < 1 or n_classes < 1:
            raise ValueError(f"--shapes needs N >= 1 and C >= 1, got {part.strip()!r}")
        shapes.append((n_rows, n_classes))
    return tuple(shapes)


def _names(option: str, text: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [name for name in names if name not in allowed]
    if not names or unknown:
        bad = ",".join(unknown) if unknown else repr(text)
        raise ValueError(f"{option} takes a comma-separated subset of {','.join(allowed)}, got {bad}")
    return tuple(dict.fromkeys(names))


def parse_backends(text: str) -> tuple[str, ...]:
    return parse_names(text, extra=PEERS)


def parse_dtypes(text: str) -> tuple[str, ...]:
    return _names("--dtypes", text, DTYPES)


def build_cases(
    shapes: tuple[tuple[int, int], ...] | None,
    dtypes: tuple[str, ...] | None,
    *,
    gpu: bool,
) -> tuple[Case, ...]:
    """The default plan, or exactly the given shapes crossed with the given dtypes."""
    if shapes is not None:
        return tuple(Case(n, c, dtype) for n, c in shapes for dtype in (dtypes or ("float32",)))
    cases = [Case(n, c, dtype) for n, c in CPU_SHAPES for dtype in (dtypes or ("float32",))]
    if gpu:
        cases += [Case(n, c, dtype, gpu_only=True) for n, c in GPU_SHAPES for dtype in (dtypes or GPU_DTYPES)]
    return tuple(cases)


def check_repeat(repeat: int) -> int:
    if repeat < 1:
        raise ValueError(f"--repeat must be >= 1, got {repeat}")
    return repeat


def check_softcap(softcap: float | None) -> float | None:
    if softcap is not None and not (0 < softcap < float("inf")):
        raise ValueError(f"--softcap must be a finite number > 0, got {softcap}")
    return softcap


def check_threads(threads: int | None) -> int | None:
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    return threads
