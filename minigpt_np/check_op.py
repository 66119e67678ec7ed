"""Check an op you wrote: its backward against finite differences, and all of it against the plain op.

    python -m minigpt_np.check_op layer_norm my_ops.py:layer_norm
    python -m minigpt_np.check_op attention my_package.my_module:attention

Your op takes the plain op's arguments (see ``functional.py``) and returns a ``minigpt_np.Tensor``
made with ``Tensor.from_op(out, parents, backward, "my_op")``. On a few shapes, in float64, it is run
on random inputs and checked two ways:

1. ``gradcheck``: the gradient your backward gives each input, against central finite differences
   of your own forward (a wrong backward shows here);
2. ``compare_twins``: your output and every input gradient against the plain op's (a wrong forward
   shows here too).

Per input it prints the largest absolute and relative difference and where it is, then names the
inputs whose gradient is wrong. Exit status: 0 all passed, 1 a check failed, 2 a usage error.
"""
import argparse
import importlib
import importlib.util
import sys
import traceback
from pathlib import Path

import numpy as np

from . import functional as plain
from .gradcheck import compare_twins, gradcheck

# Against the plain op: the parity contract's float64 tolerance for gradients (docs/parity.md), abs 1e-10 + 1e-8 * max|plain|.
TWIN_TOLERANCE = dict(atol=1e-10, rtol=1e-8)


def _cases_embedding(rng):
    for B, T, V, C in [(2, 5, 4, 3), (1, 7, 9, 2), (3, 3, 2, 5)]:
        ids = rng.integers(0, V, (B, T))  # V small: ids repeat
        yield f"ids {ids.shape}, weight ({V}, {C})", ["weight"], [rng.standard_normal((V, C))], \
            (lambda fn, ids=ids: lambda w: fn(ids, w))


def _cases_linear(rng):
    for B, T, n_in, n_out in [(2, 3, 4, 5), (1, 1, 3, 2), (3, 4, 2, 6)]:
        arrays = [rng.standard_normal((B, T, n_in)), rng.standard_normal((n_out, n_in)), rng.standard_normal(n_out)]
        yield f"x ({B}, {T}, {n_in}), weight ({n_out}, {n_in})", ["x", "weight", "bias"], arrays, \
            (lambda fn: lambda x, w, b: fn(x, w, b))


def _cases_layer_norm(rng):
    for B, T, C, shift in [(2, 3, 5, 0.0), (1, 4, 8, 3.0), (3, 2, 3, -2.0)]:
        arrays = [rng.standard_normal((B, T, C)) + shift, rng.standard_normal(C), rng.standard_normal(C)]
        yield f"x ({B}, {T}, {C})", ["x", "weight", "bias"], arrays, (lambda fn: lambda x, w, b: fn(x, w, b))


def _cases_attention(rng):
    for B, T, H, D in [(2, 4, 2, 2), (1, 5, 1, 3), (2, 3, 3, 1)]:
        yield f"qkv ({B}, {T}, {3 * H * D}), {H} heads", ["qkv"], [rng.standard_normal((B, T, 3 * H * D))], \
            (lambda fn, H=H: lambda qkv: fn(qkv, H))


def _cases_elementwise(rng, scale=1.0):
    for shape in [(2, 3, 4), (7,), (1, 5, 3)]:
        yield f"x {shape}", ["x"], [rng.standard_normal(shape) * scale], (lambda fn: lambda x: fn(x))


def _cases_dropout(rng):
    for shape, p in [((2, 3, 4), 0.5), ((9,), 0.1), ((1, 5, 3), 0.3)]:
        mask = plain.dropout_mask(shape, p, rng, np.float64)
        yield f"x {shape}, p {p}, a fixed mask", ["x"], [rng.standard_normal(shape)], \
            (lambda fn, p=p, mask=mask: lambda x: fn(x, p, True, mask=mask))


def _cases_cross_entropy(rng):
    for B, T, V in [(2, 3, 5), (1, 6, 3), (3, 2, 7)]:
        targets = rng.integers(0, V, (B, T))
        targets[rng.random((B, T)) < 0.3] = -100  # some positions ignored
        targets[0, 0] = 1
        yield f"logits ({B}, {T}, {V}), some targets ignored", ["logits"], [rng.standard_normal((B, T, V)) * 2], \
            (lambda fn, targets=targets: lambda z: fn(z, targets))


OPS = {
    "embedding": _cases_embedding,
    "linear": _cases_linear,
    "layer_norm": _cases_layer_norm,
    "attention": _cases_attention,
    "gelu": lambda rng: _cases_elementwise(rng, scale=3.0),
    "dropout": _cases_dropout,
    "softmax": _cases_elementwise,
    "log_softmax": _cases_elementwise,
    "cross_entropy": _cases_cross_entropy,
}


class UsageError(ValueError):
    """A bad command line: printed as one ``error:`` line, exit status 2."""


def load_function(spec):
    """The function named by "path/to/file.py:name" or "package.module:name"."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise UsageError(f"{spec!r} is not FILE.py:FUNCTION or MODULE:FUNCTION")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise UsageError(f"{where}: no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:  # the learner's file: say what went wrong, in one line
            raise UsageError(f"{where} could not be loaded: {type(error).__name__}: {error}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as error:
            raise UsageError(f"cannot import {where}: {error}") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UsageError(f"{where} has no function {name!r}")
    return function


def check(op, candidate, seed=0, out=sys.stdout):
    """Run both checks of ``op`` on ``candidate`` over the op's cases. Returns {wrong part: the number of
    cases it was wrong in}, the parts being "output", "d/d x", ... and "runs" (the op raised); empty when
    all passed."""
    reference = getattr(plain, op)
    wrong = {}  # what -> the number of cases where it was wrong
    rng = np.random.default_rng(seed)
    for description, names, arrays, bind in OPS[op](rng):
        print(f"\n{op} on {description}", file=out)
        try:
            by_fd = gradcheck(bind(candidate), *arrays, names=names, seed=seed, raise_on_failure=False)
            by_twin = compare_twins(bind(candidate), bind(reference), *arrays, names=names, seed=seed,
                                    raise_on_failure=False, **TWIN_TOLERANCE)
        except Exception as error:  # the learner's op failed to run: show where, and go on
            print(f"  your {op} raised {type(error).__name__}: {error}", file=out)
            for line in traceback.format_exc(limit=-1).strip().splitlines()[1:-1]:  # where, in your file
                print("  " + line.strip(), file=out)
            wrong["runs"] = wrong.get("runs", 0) + 1
            continue
        print(f"  {by_fd}".replace("\n", "\n  "), file=out)
        print(f"  plain {op}: {by_twin}".replace("\n", "\n  "), file=out)
        for what in set(by_fd.failed + by_twin.failed):
            wrong[what] = wrong.get(what, 0) + 1
    return wrong


def verdict(op, wrong, cases):
    """One line per wrong part, pointing at it."""
    if not wrong:
        return [f"all checks passed: your {op} agrees with finite differences and with the plain {op}"]
    lines = []
    if "runs" in wrong:
        lines.append(f"your {op} raised an error in {wrong['runs']} of {cases} cases (see above)")
    gradients = sorted(what[len("d/d "):] for what in wrong if what.startswith("d/d "))
    for name in gradients:
        lines.append(f"wrong gradient: d/d {name} (the gradient your backward returns for input {name!r}; "
                     f"wrong in {wrong[f'd/d {name}']} of {cases} cases)")
    if "output" in wrong:
        lines.append(f"wrong output: the forward differs from the plain {op} in {wrong['output']} of {cases} cases")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m minigpt_np.check_op", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("op", help=f"the op to check: {', '.join(OPS)}")
    parser.add_argument("function", help="your version: FILE.py:FUNCTION or MODULE:FUNCTION")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    args = parser.parse_args(argv)
    try:
        if args.op not in OPS:
            raise UsageError(f"op: unknown op {args.op!r}; choose one of {', '.join(OPS)}")
        candidate = load_function(args.function)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    wrong = check(args.op, candidate, args.seed)
    cases = len(list(OPS[args.op](np.random.default_rng(args.seed))))
    print()
    for line in verdict(args.op, wrong, cases):
        print(line)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
