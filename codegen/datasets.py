"""The handwritten digits shipped in ``codegen/data`` (see its README), and a fixed split."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIGITS_PATH = Path(__file__).parent / "data" / "digits.csv.gz"
PIXEL_MAX = 16.0


@dataclass(frozen=True)
class Split:
    """Features and integer labels of the training and held-out rows."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits(path: Path = DIGITS_PATH) -> tuple[np.ndarray, np.ndarray]:
    """Pixels as float64 (1797, 64), counts 0..16, and the digits as int64 (1797,)."""
    with gzip.open(path, "rt", encoding="ascii") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.float64, ndmin=2)
    if table.shape[1] != 65:
        raise ValueError(f"{path}: expected 65 columns (64 pixels and a label), got {table.shape[1]}")
    return table[:, :64], table[:, 64].astype(np.int64)


def train_test_split(
    features: np.ndarray, labels: np.ndarray, test_fraction: float = 0.25, seed: int = 0
) -> Split:
    """Stratified split: the same ``test_fraction`` of every class is held out, rows chosen by
    a seeded permutation, so the split is the same on every machine."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    held_out = []
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        held_out.append(rows[: round(test_fraction * len(rows))])
    test_rows = np.sort(np.concatenate(held_out))
    train_rows = np.setdiff1d(np.arange(len(labels)), test_rows)
    return Split(features[train_rows], labels[train_rows], features[test_rows], labels[test_rows])


def digits_split(seed: int = 0) -> Split:
    """The digits with features scaled to [0, 1], split 75 / 25."""
    features, labels = load_digits()
    return train_test_split(features / PIXEL_MAX, labels, seed=seed)
