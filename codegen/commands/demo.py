"""gradsmith demo: train a linear softmax classifier on handwritten digits with every backend.

``z = W x + b`` on the UCI digits (features scaled to [0, 1]).  The loss and ``dL/dz`` come from
the generated kernels (``gradsmith.load``); ``dL/dW`` and ``dL/db`` are the matrix expressions of
``gradsmith.derive.linear.batch_parameter_gradients()``, printed to NumPy by ``sympy.lambdify``.  Every
backend starts from the same zero weights and sees the same mini-batches, so all of them must
reach the same held-out accuracy and, within rounding, the same final loss.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import gradsmith
import numpy as np
import sympy as sp
from gradsmith.codegen.datasets import Split, digits_split
from gradsmith.codegen.errors import UserError
from gradsmith.codegen.registry import backends_option, names

MIN_ACCURACY = 0.90
# Relative difference allowed between the backends' final training losses: each step differs
# by rounding only, and gradient descent on this convex loss does not amplify it.
LOSS_TOLERANCE = {"float64": 1e-8, "float32": 1e-4}
UNAVAILABLE = (ValueError, TypeError, ImportError, OSError, RuntimeError, NotImplementedError)


def _positive(kind: type) -> Callable[[str], float | int]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backends", type=backends_option(), default=names(),
                        help=f"comma-separated subset of {','.join(names())} (default: all; "
                        "unavailable ones are skipped with the reason)")
    parser.add_argument("--epochs", type=_positive(int), default=20, help="passes over the data")
    parser.add_argument("--lr", type=_positive(float), default=0.5, help="learning rate")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="rows per gradient step; 0 for full-batch gradient descent")
    parser.add_argument("--seed", type=int, default=0, help="seed of the mini-batch order")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="dtype of the kernels and the parameters")


@dataclass(frozen=True)
class Result:
    backend: str
    final_loss: float
    accuracy: float
    seconds: float


def parameter_gradient_functions() -> dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """``dW(dZ, X)`` and ``db(dZ, X)`` as NumPy functions of the derived matrix expressions."""
    from gradsmith.derive import linear

    expressions = linear.batch_parameter_gradients()
    matrices = {
        symbol.name: symbol
        for name in ("dW", "db")
        for symbol in expressions[name].atoms(sp.MatrixSymbol)
    }
    if "dZ" not in matrices:
        raise ValueError("gradsmith.derive.linear.batch_parameter_gradients(): no MatrixSymbol named dZ")
    dz = matrices["dZ"]
    x = matrices.get("X", sp.MatrixSymbol("X", dz.shape[0], sp.Symbol("D")))
    sizes = [(dim, position) for position, dim in enumerate((*dz.shape, x.shape[1]))
             if isinstance(dim, sp.Symbol)]
    arguments = [dz, x, *(dim for dim, _ in sizes)]
    functions = {}
    for name in ("dW", "db"):
        compiled = sp.lambdify(arguments, expressions[name], modules="numpy")

        def evaluate(dlogits, features, compiled=compiled):
            shape = (*dlogits.shape, features.shape[1])
            return np.asarray(compiled(dlogits, features, *(shape[p] for _, p in sizes)))

        functions[name] = evaluate
    return functions


def _host(array) -> np.ndarray:
    return np.asarray(array.get() if hasattr(array, "get") else array)


def train(
    backend: str,
    kernel: Callable,
    gradients: dict[str, Callable],
    data: Split,
    args: argparse.Namespace,
) -> Result:
    dtype = np.dtype(args.dtype)
    x_train, x_test = data.x_train.astype(dtype), data.x_test.astype(dtype)
    classes = int(max(data.y_train.max(), data.y_test.max())) + 1
    weights = np.zeros((classes, x_train.shape[1]), dtype=dtype)
    bias = np.zeros(classes, dtype=dtype)
    rows = len(x_train)
    batch = rows if args.batch_size <= 0 else min(args.batch_size, rows)
    rng = np.random.default_rng(args.seed)
    report_every = max(1, args.epochs // 5)
    started = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(rows) if batch < rows else np.arange(rows)
        for start in range(0, rows, batch):
            chosen = order[start : start + batch]
            features = x_train[chosen]
            logits = features @ weights.T + bias
            _, dlogits = kernel(np.ascontiguousarray(logits), data.y_train[chosen])
            dlogits = _host(dlogits)
            weights -= dtype.type(args.lr) * gradients["dW"](dlogits, features).reshape(weights.shape)
            bias -= dtype.type(args.lr) * gradients["db"](dlogits, features).reshape(bias.shape)
        if epoch % report_every == 0 or epoch == args.epochs:
            loss = float(_host(kernel(x_train @ weights.T + bias, data.y_train)[0]))
            print(f"  {backend:5s} epoch {epoch:4d}  training loss {loss:.6f}")
    seconds = time.perf_counter() - started
    predictions = np.argmax(x_test @ weights.T + bias, axis=1)
    accuracy = float(np.mean(predictions == data.y_test))
    return Result(backend, loss, accuracy, seconds)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 0:
        raise UserError(f"--batch-size must be 0 (full batch) or positive, got {args.batch_size}")
    data = digits_split()
    gradients = parameter_gradient_functions()
    print(f"digits: {len(data.y_train)} training rows, {len(data.y_test)} held out, "
          f"{data.x_train.shape[1]} features; {args.dtype}, {args.epochs} epochs, "
          f"lr {args.lr}, batch {args.batch_size or 'full'}")
    results = []
    for backend in args.backends:
        try:
            kernel = gradsmith.load(backend, args.dtype)
        except UNAVAILABLE as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"{backend}: skipped ({reason})")
            continue
        print(f"{backend}:")
        results.append(train(backend, kernel, gradients, data, args))
    if not results:
        print("no backend could run")
        return 1
    print("backend  held-out accuracy  final training loss  seconds")
    for result in results:
        print(f"{result.backend:7s}  {result.accuracy:17.4f}  {result.final_loss:19.10f}  "
              f"{result.seconds:7.2f}")
    return 0 if _consistent(results, args.dtype) else 1


def _consistent(results: list[Result], dtype: str) -> bool:
    ok = True
    first = results[0]
    for result in results:
        if result.accuracy < MIN_ACCURACY:
            print(f"FAIL: {result.backend} accuracy {result.accuracy:.4f} < {MIN_ACCURACY}")
            ok = False
        if result.accuracy != first.accuracy:
            print(f"FAIL: {result.backend} accuracy {result.accuracy:.4f} differs from "
                  f"{first.backend} {first.accuracy:.4f}")
            ok = False
        difference = abs(result.final_loss - first.final_loss)
        if not difference <= LOSS_TOLERANCE[dtype] * abs(first.final_loss):
            print(f"FAIL: {result.backend} final loss differs from {first.backend} by "
                  f"{difference:.3g} (tolerance {LOSS_TOLERANCE[dtype]:g} relative)")
            ok = False
    if ok:
        print(f"all {len(results)} backends agree: accuracy {first.accuracy:.4f} >= "
              f"{MIN_ACCURACY}, final losses within {LOSS_TOLERANCE[dtype]:g}")
    return ok
