"""The runner: everything a training stage needs that is not its method.

A stage (``stages.pretrain``, ``stages.sft``, ``rl.reinforce``) gives ``train_loop`` two functions, the
step's loss (``make_loss(rng)``) and an evaluation, and the runner does the rest: the optimizer,
deterministic per-step randomness, the progress bar, the metrics log, checkpoints and their cadence,
resuming, Ctrl-C, the NaN guard, and reading the device's values in batches.

Determinism: the batch (or rollout) of step s of a stage comes from the random stream
``stream(seed, stage, s)``, and the dropout stream is restarted from it too. A run resumed from step s
therefore draws exactly what an unbroken run would have drawn, and reports the same losses.

Data parallelism (the torch backend under torchrun): every rank draws the same global batch and
computes its share of it (``backend.share``), weighted with the global batch's normalisers, so the
ranks' summed gradient is the global batch's; rank 0 alone writes files (``Run.writes``).
"""
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint

STAGES = ("pretrain", "sft", "rm", "rl")  # rm: the reward model, when the run has one


# Every random stream of a run has a name, and its numbers come from (the run's seed, the name's key, and
# any further keys such as the step): a stage or an evaluation added later leaves the others' numbers as
# they were. The keys are arbitrary distinct integers; changing one changes that stream's draws.
STREAMS = {
    "pretrain": 0, "sft": 1, "rl": 2, "rm": 3,  # each training step's batch (or rollout) and dropout masks
    "sft/evaluation": 2_000_003,  # the format rate's samples during SFT
    "rl/evaluation": 3_000_003,  # the held-out prompts' samples during RL
    "stage_metrics": 4_000_037,  # the metrics after each stage: the final policy's answers, format rate, ...
    "report_samples": 5_000_011,  # the report's samples after each stage, one stream per prompt
    "best_of_n": 6_000_011,  # compare_rl.py's pool of SFT answers
    "preferences": 7_000_003,  # the reward model's preference pairs: the rejected answers made and sampled
    "shuffled_words": 8_000_009,  # the gold judge's pair share of answers with their words shuffled
}


def stream(seed, name, *keys):
    """The random generator of the named stream (STREAMS) of a run with this seed; keys: e.g. the step."""
    return np.random.default_rng([seed, STREAMS[name], *keys])


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the last good checkpoint is kept."""


class StageInterrupted(RuntimeError):
    """Ctrl-C: the stage saved its progress and stopped; --resume continues it."""


@dataclass(kw_only=True)
class StageSettings:
    """How one stage trains (the run's values come from its PipelineSettings: ``pipeline._stage_settings``)."""
    steps: int
    lr: float
    batch_size: int
    eval_every: int
    checkpoint_every: int  # 0: only at the end of the stage and on Ctrl-C
    weight_decay: float
    max_grad_norm: float
    log_every: int


@dataclass(kw_only=True)
class SamplingSettings:
    """How answers are sampled (the run's values come from its PipelineSettings)."""
    temperature: float
    top_k: int
    max_new_tokens: int


class Run:
    """What every stage works on: the backend and model, vocabulary, run folder, metrics and seed."""

    def __init__(self, backend, model, config, tokenizer, folder, metrics, seed, sampling, resume=False,
                 progress=True, notify=print):
        self.backend, self.model, self.config, self.tokenizer = backend, model, config, tokenizer
        self.folder, self.metrics, self.seed, self.sampling = Path(folder), metrics, seed, sampling
        self.resume, self.progress, self.notify = resume, progress, notify
        self.stop_id = tokenizer.index["\n"]
        self.writes = backend.rank == 0  # one writer: checkpoints, logs, plots and the report

    def any_rank(self, flag):
        """True when flag is true on any rank (the same answer on every rank)."""
        return bool(self.backend.all_sum([float(flag)])[0])

    def stage_folder(self, stage):
        return self.folder / stage

    def predict(self, ids, last=None):
        return self.backend.predict(self.model, ids, last)

    def stage_checkpoint(self, stage):
        """The stage's checkpoint in this run folder, or None if there is none yet."""
        folder = self.stage_folder(stage)
        if not (folder / "checkpoint.json").exists():
            return None
        return load_checkpoint(folder, expect_config=self.config, expect_tokenizer=self.tokenizer)

    def save(self, stage, step, complete, optimizer=None, metrics=None, extra=None):
        if self.writes:
            arrays, steps = (self.backend.optimizer_state(self.model, optimizer) if optimizer is not None
                             else (None, None))
            save_checkpoint(self.stage_folder(stage), self.backend.state_dict(self.model), self.config,
                            self.tokenizer, stage=stage, step=step, complete=complete, metrics=metrics,
                            optimizer_arrays=arrays, optimizer_steps=steps,
                            extra={"backend": self.backend.name, "seed": self.seed, **(extra or {})})
        self.any_rank(False)  # every rank waits for the checkpoint to be written


class _CtrlC:
    """Within this block the first Ctrl-C only sets .requested (the loop saves and stops between
    steps, so a half-applied update is never saved); a second Ctrl-C interrupts at once."""

    def __enter__(self):
        self.requested = False
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _progress_bar(run, stage, total, initial):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"{stage:<8}", disable=not (run.progress and run.writes),
                mininterval=0.5, dynamic_ncols=True, leave=True)


@dataclass
class _Progress:
    """Where a stage stands: the last step done, its wall time so far, the last evaluation's metrics,
    and the last step saved (the one a NaN falls back to)."""
    step: int = 0
    wall_time: float = 0.0
    last_eval: dict = field(default_factory=dict)
    saved_step: int = 0


def _resume(run, stage, settings, optimizer, state):
    """When resuming a stopped stage: its weights, optimizer state and carried state loaded, and its progress.
    Otherwise a fresh start."""
    partial = run.stage_checkpoint(stage) if run.resume else None
    if partial is None:
        return _Progress()
    if partial.optimizer_arrays is None or partial.meta.get("optimizer_steps") is None:
        raise CheckpointError(f"{partial.folder}: the stopped {stage} stage's checkpoint has no optimizer state "
                              f"to resume from")
    run.backend.load_state_dict(run.model, partial.weights)
    run.backend.load_optimizer_state(run.model, optimizer, partial.optimizer_arrays, partial.meta["optimizer_steps"])
    if state is not None:
        state.update(partial.meta.get("stage_state", {}))
    run.notify(f"{stage}: resuming at step {partial.step} of {settings.steps}")
    return _Progress(partial.step, partial.meta.get("wall_time", 0.0), partial.meta.get("metrics", {}), partial.step)


class _DeferredReads:
    """Each step's loss and gradient norm stay with the backend until a step logs, evaluates or saves;
    then all the unread ones are read with one ``backend.read`` (on a GPU each read waits for the
    device's queue). The NaN guard checks every value read."""

    def __init__(self, backend, stage, loss_name):
        self.backend, self.stage, self.loss_name, self.unread = backend, stage, loss_name, []

    def add(self, step, metrics, values):
        self.unread.append((step, metrics, values))  # values: {name: a backend's value handle}

    def read(self, saved_step):
        """Fill the unread steps' metrics; TrainingDiverged at the first non-finite loss or gradient norm."""
        numbers = iter(self.backend.read([value for _, _, values in self.unread for value in values.values()]))
        for step, metrics, values in self.unread:
            metrics.update({name: next(numbers) for name in values})
            for name, what in ((self.loss_name, "loss"), ("grad_norm", "gradient norm")):
                if not math.isfinite(metrics[name]):
                    raise TrainingDiverged(f"{self.stage}: the {what} became {metrics[name]} at step {step}; "
                                           f"stopped, the last good checkpoint (step {saved_step}) is kept")
        self.unread.clear()


def _optimizer_step(run, stage, step, settings, make_loss, optimizer, loss_name):
    """One step of the stage: its random stream, dropout masks from it, make_loss's loss and the update.
    Returns (the step's metrics, {name: value handle} of its loss and gradient norm)."""
    rng = stream(run.seed, stage, step)
    run.backend.seed_dropout(run.model, int(rng.integers(2**62)))
    loss, metrics = make_loss(rng)  # loss None: make_loss accumulated the gradients and logged the value
    values = {} if loss is None else {loss_name: run.backend.loss_value(loss)}
    values["grad_norm"] = run.backend.optimizer_step(run.model, optimizer, loss, settings.max_grad_norm)
    return metrics, values


def _save(run, stage, step, optimizer, progress, state):
    run.save(stage, step, False, optimizer, progress.last_eval, {"wall_time": progress.wall_time, "stage_state": state})


def train_loop(run, stage, settings, make_loss, evaluate=None, loss_name="train_loss", state=None):
    """Run steps 1..settings.steps of a stage (continuing a saved partial stage when resuming).

    make_loss(rng) -> (loss, metrics): the step's loss handle and any other metrics of the step;
    the loss's value is logged as loss_name. A stage that accumulates gradients itself (in pieces,
    with backend.backward) returns loss None and puts the value in metrics[loss_name].
    evaluate() -> metrics, every eval_every steps and at the end.
    state: a dict of plain numbers the stage carries from step to step (saved and restored with it).
    Returns (metrics of the last evaluation, wall time of the stage in seconds).

    The values of the steps are read in batches (``_DeferredReads``), so the NaN guard stops the stage
    up to log_every - 1 steps after a bad one; nothing is saved in between (a save reads first).
    """
    optimizer = run.backend.create_optimizer(run.model, settings.lr, settings.weight_decay)
    progress = _resume(run, stage, settings, optimizer, state)
    run.metrics.truncate_after(stage, progress.step)
    reads = _DeferredReads(run.backend, stage, loss_name)
    block_seconds, block_steps = 0.0, 0  # the training steps since the last logged one (no evaluation)
    shown = {}  # the last logged step's metrics, for the progress bar
    with _CtrlC() as ctrl_c, _progress_bar(run, stage, settings.steps, progress.step) as bar:
        for step in range(progress.step + 1, settings.steps + 1):
            if run.any_rank(ctrl_c.requested):  # every rank stops at the same step
                reads.read(progress.saved_step)  # a NaN among them: TrainingDiverged, and nothing is saved
                _save(run, stage, step - 1, optimizer, progress, state)
                raise StageInterrupted(f"{stage}: stopped at step {step - 1} of {settings.steps} and saved to "
                                       f"{run.stage_folder(stage)}; run again with --resume to continue")
            started = time.perf_counter()
            metrics, values = _optimizer_step(run, stage, step, settings, make_loss, optimizer, loss_name)
            reads.add(step, metrics, values)
            logs = step == 1 or step % settings.log_every == 0 or step == settings.steps
            evaluates = evaluate is not None and (step % settings.eval_every == 0 or step == settings.steps)
            saves = bool(settings.checkpoint_every) and step % settings.checkpoint_every == 0 and step < settings.steps
            if logs or evaluates or saves:
                reads.read(progress.saved_step)  # also waits for the device: the steps' work is done after it
            block_seconds, block_steps = block_seconds + time.perf_counter() - started, block_steps + 1
            if logs:
                metrics["step_seconds"] = block_seconds / block_steps  # sampling, loss and update
                block_seconds, block_steps, shown = 0.0, 0, metrics
                run.metrics.log(stage, step, **metrics)
            if evaluates:
                progress.last_eval = evaluate()
                run.metrics.log(stage, step, **progress.last_eval)
            if logs or evaluates:
                bar.set_postfix({k: f"{v:.3f}" for k, v in {**shown, **progress.last_eval}.items()
                                 if k in (loss_name, "val_loss", "answer_loss", "reward_mean")})
            progress.wall_time += time.perf_counter() - started  # the step and its evaluation
            bar.update(1)
            if saves:
                _save(run, stage, step, optimizer, progress, state)
                progress.saved_step = step
    return progress.last_eval, progress.wall_time
