"""TinyGPT on your own ops: ``run_all.py --backend numpy --kernels lab --lab-dir lab``.

``lab_kernels`` takes each of the model's ops (``nn.KERNEL_OPS``) from your lab folder where its exercise
passes, and the plain op (``functional.py``) elsewhere. ``side_by_side`` trains that model and the plain
model from one seed on the same batches, step by step, and says whether they part: the loss and every
parameter's gradient compared at each step, in float64.
"""
import dataclasses
from pathlib import Path

import numpy as np

from .. import functional
from ..nn import KERNEL_OPS, mixed_kernels
from ..model import TinyGPT
from ..optim import AdamW
from .exercises import EXERCISES
from ..train.data import random_windows
from .grader import ATOL, RTOL, Grade, grade, load_learner_function

NUMBERS = {exercise.name: number for number, exercise in enumerate(EXERCISES, 1)}


def lab_kernels(folder):
    """(the model's ops: yours where your exercise passes, plain elsewhere; a line per op saying which)."""
    yours, lines = {}, []
    for op in KERNEL_OPS:
        number = NUMBERS[op]
        path = Path(folder) / f"{number:02d}_{op}.py"
        if not path.exists():
            lines.append(f"{op}: the plain op (exercise {number} not started in {folder})")
            continue
        function = load_learner_function(path, op)
        result = function if isinstance(function, Grade) else grade(EXERCISES[number - 1], function)
        if result.passed:
            yours[op] = function
            lines.append(f"{op}: yours ({path})")
        else:
            lines.append(f"{op}: the plain op (exercise {number}: {result.status}; python -m minigpt_np.lab check {number})")
    return mixed_kernels(functional, **yours), lines


def _close(given, expected):
    return np.max(np.abs(given - expected), initial=0.0) <= ATOL + RTOL * np.max(np.abs(expected), initial=0.0)


def side_by_side(ops, config, tokens, steps, seed, batch_size, lr=3e-4, weight_decay=0.01):
    """Train TinyGPT on ops and on the plain ops, from one seed, on the same batches, in float64.
    Returns one line: how long they agree, or the step and tensor where they part."""
    config = dataclasses.replace(config, dtype="float64")
    models = [TinyGPT(config, seed=seed, kernels=ops), TinyGPT(config, seed=seed, kernels="plain")]
    optimizers = [AdamW(model.parameters(), lr=lr, weight_decay=weight_decay) for model in models]
    rng = np.random.default_rng(seed)
    largest = 0.0
    for step in range(1, steps + 1):
        inputs, targets = random_windows(tokens, batch_size, config.context_length, rng)
        losses = []
        for model, optimizer in zip(models, optimizers):
            model.train(True)
            model.seed_dropout(seed + step)
            optimizer.zero_grad()
            loss = functional.cross_entropy(model(inputs), targets)
            loss.backward()
            losses.append(float(loss.data))
        yours, plain = losses
        if not _close(np.array(yours), np.array(plain)):
            return (f"your run parts from the reference at step {step}: the loss is {yours:.6g}, the reference's "
                    f"{plain:.6g}")
        largest = max(largest, abs(yours - plain))
        for (name, p), (_, q) in zip(models[0].named_parameters(), models[1].named_parameters()):
            if not _close(p.grad, q.grad):
                return (f"your run parts from the reference at step {step}: the gradient of {name} differs by "
                        f"{np.max(np.abs(p.grad - q.grad)):.3g}")
        for optimizer in optimizers:
            optimizer.step()
    return f"your model trains exactly like the reference for {steps} steps (largest loss difference {largest:.3g})"


def check_lab_model(settings, data, notify=print):
    """Before a --kernels lab run's stages: say which ops are yours, and train your model beside the plain one
    for settings.lab_steps steps on the run's own data and model shape (data: ``pipeline.load_data``'s)."""
    ops, lines = lab_kernels(settings.lab_dir)
    for line in lines:
        notify(f"lab: {line}")
    if settings.lab_steps:
        notify("lab: " + side_by_side(ops, data.config, data.tokens["train"], settings.lab_steps, settings.seed,
                                      settings.batch_size))
