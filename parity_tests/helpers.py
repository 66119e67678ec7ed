"""Shared tools of the parity tests: the tolerances of the parity contract (docs/parity.md) and comparisons that explain themselves.

Every comparison is by name and reports, for each tensor, the max abs diff, the max rel diff and
the tolerance used. References are always computed by torch in the same test run.
"""
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Tolerance:
    """|actual - ref| <= atol + rtol * scale, where scale is |ref| per element ("element")
    or max |ref| over the whole tensor ("max")."""

    atol: float
    rtol: float = 0.0
    scale: str = "element"

    def bound(self, reference):
        scale = np.abs(reference) if self.scale == "element" else np.max(np.abs(reference), initial=0.0)
        return self.atol + self.rtol * scale

    def __str__(self):
        if not self.rtol:
            return f"abs<={self.atol:g}"
        ref = "|ref|" if self.scale == "element" else "max|ref|"
        return f"abs<={self.atol:g}+{self.rtol:g}*{ref}"


# The parity contract (docs/parity.md), one row per kind of quantity.
CONTRACT = {
    "float64": {
        "value": Tolerance(1e-10),  # logits, loss (dropout 0)
        "grad": Tolerance(1e-10, 1e-8, "max"),  # every parameter gradient
        "optimizer": Tolerance(1e-10),  # AdamW + clip, 10 steps
        "trajectory": Tolerance(1e-8),  # 50 training steps, each step's loss
    },
    "float32": {
        "value": Tolerance(1e-5),
        # Rounding grows with the size of what was summed, which the tensor's largest entry measures: a
        # gradient that cancels to zero (the key bias of attention) is rounding noise on both sides, and an
        # element-wise bound (1e-3 * |ref|) gave that noise no room.
        "grad": Tolerance(1e-5, 1e-3, "max"),
        "optimizer": Tolerance(1e-5),
        "trajectory": Tolerance(1e-4),
    },
}

TORCH_DTYPE = {"float32": torch.float32, "float64": torch.float64}


def to_numpy(value):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if hasattr(value, "data") and isinstance(value.data, np.ndarray):
        return value.data
    return np.asarray(value)


def compare(actual, expected, tolerance, what=""):
    """Compare two dicts name -> array (numpy arrays, Tensors of either backend).

    Returns the per-tensor report rows; raises AssertionError listing every tensor (failures first)
    if any element is out of tolerance, or if the names or shapes differ.
    """
    if list(actual) != list(expected):
        missing = sorted(set(expected) - set(actual))
        extra = sorted(set(actual) - set(expected))
        raise AssertionError(f"{what}: names differ; missing {missing}, unexpected {extra}")
    rows, failed = [], False
    for name in expected:
        a, e = to_numpy(actual[name]), to_numpy(expected[name])
        if a.shape != e.shape:
            raise AssertionError(f"{what}: {name} has shape {a.shape}, reference {e.shape}")
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        both_nan = np.isnan(a64) & np.isnan(e64)  # NaN where torch has NaN counts as equal
        diff = np.where(both_nan, 0.0, np.abs(a64 - e64))
        ok = bool(np.all(diff <= np.where(both_nan, 0.0, tolerance.bound(e64))))
        max_abs = float(np.max(diff, initial=0.0))
        max_rel = float(np.max(diff / np.maximum(np.abs(e64), np.finfo(np.float64).tiny), initial=0.0))
        rows.append((name, max_abs, max_rel, ok))
        failed |= not ok
    if failed:
        lines = [f"{what}: out of tolerance ({tolerance})", f"{'':2}{'name':<50} {'max abs':>10} {'max rel':>10}"]
        for name, max_abs, max_rel, ok in sorted(rows, key=lambda row: row[3]):
            lines.append(f"{'' if ok else '!!'}{'':2}{name:<50} {max_abs:10.3e} {max_rel:10.3e}")
        raise AssertionError("\n".join(lines))
    return rows


# (scope, kind, dtype) -> (largest max-abs diff seen in this run, where); conftest.py prints it.
LARGEST = {}


def check(actual, expected, dtype, kind, what, scope="op"):
    """compare() with the contract's tolerance for this dtype and kind of quantity, and record
    the largest difference seen; scope ("op", "model", "training") groups the summary."""
    rows = compare(actual, expected, CONTRACT[dtype][kind], f"{what} [{dtype}]")
    worst = max(rows, key=lambda row: row[1])
    key = (scope, kind, dtype)
    if worst[1] >= LARGEST.get(key, (-1.0, ""))[0]:
        LARGEST[key] = (worst[1], f"{what}: {worst[0]}")
    return rows
