"""Check a backward: against central finite differences, or against a twin op.

    >>> import numpy as np
    >>> from minigpt_np import functional as F
    >>> from minigpt_np.gradcheck import gradcheck
    >>> rng = np.random.default_rng(0)
    >>> report = gradcheck(F.layer_norm, rng.standard_normal((2, 3, 5)), rng.standard_normal(5), rng.standard_normal(5))
    >>> report.ok
    True

Both checks reduce the op's output to one number, L = sum(out * w) with a fixed random w, so that
every input's gradient dL/d input is a full array to compare element by element:

* ``gradcheck`` compares backward()'s dL/dx with (L(x + eps) - L(x - eps)) / (2 eps), one element
  of x at a time (float64; the error of central differences is about eps^2, their rounding about
  1e-16 / eps).
* ``compare_twins`` runs two implementations of one op on the same inputs and w and compares
  their outputs and every input gradient (how ``fast.py`` is proven equal to ``functional.py``).

A report holds, per input, the largest absolute difference, the same relative to the largest
magnitude of the reference (the numeric gradient, or the reference op's), and the index where the
difference is largest. A miss raises ``GradcheckError`` with that report.
"""
from dataclasses import dataclass

import numpy as np

from .autograd import Tensor, no_grad


class GradcheckError(AssertionError):
    """A gradient (or a value) differs from its reference by more than the tolerance."""


@dataclass(frozen=True)
class Difference:
    """How one array differs from its reference: |actual - reference| <= atol + rtol * max|reference|?"""

    what: str
    max_abs: float
    max_rel: float  # max_abs / max|reference| (0 when both are all zeros)
    worst_index: tuple
    bound: float
    ok: bool

    def line(self):
        mark = "ok  " if self.ok else "FAIL"
        return (f"{mark} {self.what:<28} max abs {self.max_abs:9.2e}  max rel {self.max_rel:9.2e}  "
                f"at {self.worst_index}  (allowed {self.bound:.1e})")


def difference(what, actual, reference, atol, rtol):
    """The Difference of two arrays of one shape (NaN where both are NaN counts as equal)."""
    actual, reference = np.asarray(actual, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if actual.shape != reference.shape:
        raise GradcheckError(f"{what}: shape {actual.shape}, the reference has {reference.shape}")
    both_nan = np.isnan(actual) & np.isnan(reference)
    diff = np.where(both_nan, 0.0, np.abs(actual - reference))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only is a miss
    scale = float(np.max(np.abs(np.where(both_nan, 0.0, reference)), initial=0.0))
    max_abs = float(np.max(diff, initial=0.0))
    worst = tuple(int(i) for i in np.unravel_index(np.argmax(diff), diff.shape)) if diff.size else ()
    bound = atol + rtol * scale
    return Difference(what, max_abs, max_abs / scale if scale else (0.0 if max_abs == 0 else np.inf),
                      worst, bound, max_abs <= bound)


class Report(list):
    """The Differences of one check, one per compared array; ``ok`` when all are within tolerance."""

    def __init__(self, title, differences):
        super().__init__(differences)
        self.title = title

    @property
    def ok(self):
        return all(d.ok for d in self)

    @property
    def failed(self):
        return [d.what for d in self if not d.ok]

    def __str__(self):
        return "\n".join([self.title] + ["  " + d.line() for d in self])

    def raise_if_failed(self):
        if not self.ok:
            raise GradcheckError(f"{', '.join(self.failed)} out of tolerance\n{self}")
        return self


def _input_names(arrays, names):
    names = list(names) if names else [f"input {i}" for i in range(len(arrays))]
    if len(names) != len(arrays):
        raise ValueError(f"{len(names)} names for {len(arrays)} inputs")
    return names


def _output_and_grads(fn, arrays, weights_seed):
    """fn on fresh float64 Tensors of the arrays; backward of sum(out * w). Returns (out, w, grads)."""
    tensors = [Tensor(np.array(a, dtype=np.float64), requires_grad=True) for a in arrays]
    out = fn(*tensors)
    if not isinstance(out, Tensor):
        raise TypeError(f"the op must return a minigpt_np Tensor, got {type(out).__name__}")
    weights = np.random.default_rng(weights_seed).standard_normal(out.shape)
    if out.requires_grad:
        out.backward(weights)
    grads = [t.grad if t.grad is not None else np.zeros_like(t.data) for t in tensors]
    return out.data, weights, grads


def gradcheck(fn, *arrays, eps=1e-6, atol=1e-7, rtol=1e-6, seed=0, names=None, raise_on_failure=True):
    """Check fn's backward against central finite differences, in float64.

    fn(*tensors) -> Tensor: the op, with any other arguments bound (e.g. ``lambda w: F.embedding(ids, w)``).
    arrays: the inputs to differentiate, as numpy arrays (made float64 Tensors here).
    Passes when, for every input, |backward - numeric| <= atol + rtol * max|numeric| everywhere.
    Returns the Report (``print(report)`` shows it); raises GradcheckError with it on a miss, unless
    raise_on_failure is False.
    """
    names = _input_names(arrays, names)
    _, weights, analytic = _output_and_grads(fn, arrays, seed)
    points = [np.array(a, dtype=np.float64) for a in arrays]

    def objective():
        with no_grad():
            return float(np.sum(fn(*(Tensor(p) for p in points)).data * weights))

    differences = []
    for name, point, grad in zip(names, points, analytic):
        numeric = np.zeros_like(point)
        for index in np.ndindex(point.shape):
            original = point[index]
            point[index] = original + eps
            plus = objective()
            point[index] = original - eps
            minus = objective()
            point[index] = original
            numeric[index] = (plus - minus) / (2 * eps)
        differences.append(difference(f"d/d {name}", grad, numeric, atol, rtol))
    report = Report(f"gradcheck (central differences, eps={eps:g}, abs<={atol:g}+{rtol:g}*max|numeric|)",
                    differences)
    return report.raise_if_failed() if raise_on_failure else report


def compare_twins(candidate, reference, *arrays, atol=0.0, rtol=1e-12, seed=0, names=None, raise_on_failure=True):
    """Run two implementations of one op on the same float64 inputs and compare the outputs and the
    gradient of every input (of the same L = sum(out * w)). Passes when each differs from the
    reference's by at most atol + rtol * max|reference's|. Returns the Report; raises GradcheckError
    on a miss unless raise_on_failure is False."""
    names = _input_names(arrays, names)
    out, _, grads = _output_and_grads(candidate, arrays, seed)
    ref_out, _, ref_grads = _output_and_grads(reference, arrays, seed)
    differences = [difference("output", out, ref_out, atol, rtol)]
    differences += [difference(f"d/d {name}", g, r, atol, rtol) for name, g, r in zip(names, grads, ref_grads)]
    report = Report(f"against the reference op (abs<={atol:g}+{rtol:g}*max|reference|)", differences)
    return report.raise_if_failed() if raise_on_failure else report
