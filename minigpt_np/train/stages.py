"""Pretraining and SFT, written once against the Backend interface (backend.py); RL is in rl.py.

Each stage is one function whose docstring states its algorithm; all three share ``train_loop``, which
owns everything that is not the algorithm: the optimizer, deterministic per-step randomness,
progress, metrics, checkpoints, resuming, Ctrl-C and the NaN guard.

Determinism: the batch (or rollout) of step s of stage k comes from a random generator seeded with
(seed, k, s), and the dropout stream is restarted from it too. A run resumed from step s therefore
draws exactly what an unbroken run would have drawn, and reports the same losses.

Data parallelism (the torch backend under torchrun): every rank draws the same global batch and
computes its share of it (``backend.share``), weighted with the global batch's normalisers, so the
ranks' summed gradient is the global batch's; rank 0 alone writes files (``Run.writes``).
"""
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import IGNORE, evaluation_windows, format_prompt, random_windows, sft_windows
from .rewards import score
from .sampling import generate

STAGES = ("pretrain", "sft", "rl")

# Every random stream of a run has a name, and its numbers come from (the run's seed, the name's key, and
# any further keys such as the step): a stage or an evaluation added later leaves the others' numbers as
# they were. The keys are arbitrary distinct integers; changing one changes that stream's draws.
STREAMS = {
    "pretrain": 0, "sft": 1, "rl": 2,  # each training step's batch (or rollout) and dropout masks
    "sft/evaluation": 2_000_003,  # the format rate's samples during SFT
    "rl/evaluation": 3_000_003,  # the held-out prompts' samples during RL
    "stage_figures": 4_000_037,  # the figures after each stage: the final policy's answers, format rate, ...
    "report_samples": 5_000_011,  # the report's samples after each stage, one stream per prompt
    "best_of_n": 6_000_011,  # compare_rl.py's pool of SFT answers
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


def train_loop(run, stage, settings, make_loss, evaluate=None, loss_name="train_loss", state=None):
    """Run steps 1..settings.steps of a stage (continuing a saved partial stage when resuming).

    make_loss(rng) -> (loss, figures): the step's loss handle and any other figures of the step;
    the loss's value is logged as loss_name. A stage that accumulates gradients itself (in pieces,
    with backend.backward) returns loss None and puts the value in figures[loss_name].
    evaluate() -> figures, every eval_every steps and at the end.
    state: a dict of plain numbers the stage carries from step to step (saved and restored with it).
    Returns (figures of the last evaluation, wall time of the stage in seconds).

    Each step's loss and gradient norm stay with the backend (``loss_value``, ``optimizer_step``) and
    are read in one batch (``read``) at the steps that log, evaluate or save, and on Ctrl-C: on a GPU
    every read waits for the device to finish its queue, so reading every step would hold the GPU to
    the host's pace. The NaN guard checks every step's values when they are read, so it stops the
    stage up to log_every - 1 steps after a bad one; nothing is saved in between (a save reads first).
    """
    backend, model = run.backend, run.model
    optimizer = backend.create_optimizer(model, settings.lr, settings.weight_decay)
    start, wall_time, last_eval = 0, 0.0, {}
    partial = run.stage_checkpoint(stage) if run.resume else None
    if partial is not None:
        if partial.optimizer_arrays is None or partial.meta.get("optimizer_steps") is None:
            raise CheckpointError(f"{partial.folder}: the stopped {stage} stage's checkpoint has no optimizer state "
                                  f"to resume from")
        backend.load_state_dict(model, partial.weights)
        backend.load_optimizer_state(model, optimizer, partial.optimizer_arrays, partial.meta["optimizer_steps"])
        start, wall_time = partial.step, partial.meta.get("wall_time", 0.0)
        last_eval = partial.meta.get("metrics", {})
        if state is not None:
            state.update(partial.meta.get("stage_state", {}))
        run.notify(f"{stage}: resuming at step {start} of {settings.steps}")
    run.metrics.truncate_after(stage, start)
    saved_step = start
    unread = []  # (step, figures, {name: value handle}) of the steps whose values are not read yet
    block_seconds, block_steps = 0.0, 0  # the training steps since the last logged one (no evaluation)
    shown = {}  # the last logged step's figures, for the progress bar

    def read_values():
        """Read the unread steps' loss and gradient norm with one backend.read; stop at the first non-finite one."""
        numbers = iter(backend.read([value for _, _, values in unread for value in values.values()]))
        for step, figures, values in unread:
            figures.update({name: next(numbers) for name in values})
            for name, what in ((loss_name, "loss"), ("grad_norm", "gradient norm")):
                if not math.isfinite(figures[name]):
                    raise TrainingDiverged(f"{stage}: the {what} became {figures[name]} at step {step}; stopped, "
                                           f"the last good checkpoint (step {saved_step}) is kept")
        unread.clear()

    with _CtrlC() as ctrl_c, _progress_bar(run, stage, settings.steps, start) as bar:
        for step in range(start + 1, settings.steps + 1):
            if run.any_rank(ctrl_c.requested):  # every rank stops at the same step
                read_values()  # a NaN among them: TrainingDiverged, and nothing is saved
                run.save(stage, step - 1, False, optimizer, last_eval, {"wall_time": wall_time, "stage_state": state})
                raise StageInterrupted(f"{stage}: stopped at step {step - 1} of {settings.steps} and saved to "
                                       f"{run.stage_folder(stage)}; run again with --resume to continue")
            started = time.perf_counter()
            rng = stream(run.seed, stage, step)
            backend.seed_dropout(model, int(rng.integers(2**62)))
            loss, figures = make_loss(rng)  # loss None: make_loss accumulated the gradients and logged the value
            values = {} if loss is None else {loss_name: backend.loss_value(loss)}
            values["grad_norm"] = backend.optimizer_step(model, optimizer, loss, settings.max_grad_norm)
            unread.append((step, figures, values))
            logs = step == 1 or step % settings.log_every == 0 or step == settings.steps
            evaluates = evaluate is not None and (step % settings.eval_every == 0 or step == settings.steps)
            saves = bool(settings.checkpoint_every) and step % settings.checkpoint_every == 0 and step < settings.steps
            if logs or evaluates or saves:
                read_values()  # also waits for the device: the steps' work is done after it
            block_seconds += time.perf_counter() - started
            block_steps += 1
            if logs:
                figures["step_seconds"] = block_seconds / block_steps  # sampling, loss and update
                block_seconds, block_steps = 0.0, 0
                run.metrics.log(stage, step, **figures)
                shown = figures
            if evaluates:
                last_eval = evaluate()
                run.metrics.log(stage, step, **last_eval)
            if logs or evaluates:
                bar.set_postfix({k: f"{v:.3f}" for k, v in {**shown, **last_eval}.items()
                                 if k in (loss_name, "val_loss", "answer_loss", "reward_mean")})
            wall_time += time.perf_counter() - started  # the step and its evaluation
            bar.update(1)
            if saves:
                run.save(stage, step, False, optimizer, last_eval, {"wall_time": wall_time, "stage_state": state})
                saved_step = step
    return last_eval, wall_time


# ---------------------------------------------------------------------------- evaluation (no gradients)
def mean_token_loss(run, inputs, targets, batch_size):
    """Mean cross-entropy (nats per predicted token) over all counted targets, in float64; each rank
    scores its share of the rows, and the sums are added over the ranks."""
    mine = run.backend.share(len(inputs))
    inputs, targets = inputs[mine], targets[mine]
    total, count = 0.0, 0
    for begin in range(0, len(inputs), batch_size):
        logits = run.predict(inputs[begin:begin + batch_size]).astype(np.float64)
        chunk = targets[begin:begin + batch_size]
        total += F.cross_entropy(Tensor(logits), chunk, ignore_index=IGNORE, reduction="sum").item()
        count += int((chunk != IGNORE).sum())
    total, count = run.backend.all_sum([total, count])
    return float(total / max(count, 1))


def language_model_figures(run, tokens, max_windows, batch_size, prefix):
    """{prefix_loss, prefix_bpc, prefix_ppl} on evenly spread windows of a text."""
    inputs, targets = evaluation_windows(tokens, run.config.context_length, max_windows)
    loss = mean_token_loss(run, inputs, targets, batch_size)
    return {f"{prefix}_loss": loss, f"{prefix}_bpc": loss / math.log(2), f"{prefix}_ppl": math.exp(loss)}


def sample_answers(run, instruction_or_prompt, n, rng, temperature=None, raw_prompt=False):
    """n sampled continuations of a prompt: [(text without the stop newline, finished?)]."""
    prompt = instruction_or_prompt if raw_prompt else format_prompt(instruction_or_prompt)
    sampling = run.sampling
    tokens, lengths, finished = generate(
        run.predict, run.tokenizer.encode(prompt), n, sampling.max_new_tokens, run.config.context_length,
        sampling.temperature if temperature is None else temperature, sampling.top_k, rng, run.stop_id)
    return [(run.tokenizer.decode(row[: length - int(done)]), bool(done))
            for row, length, done in zip(tokens, lengths, finished)]


def follows_answer_format(text, finished):
    """An answer is " <some text>" closed by the newline."""
    return finished and text.startswith(" ") and bool(text.strip())


def answer_figures(run, held_out_pairs, batch_size, rng):
    """answer_loss (answer-only cross-entropy, every answer character in the window sampling gives it) and
    format_rate on held-out instruction/answer pairs."""
    inputs, targets, _ = sft_windows(held_out_pairs, run.tokenizer, run.config.context_length)
    formatted = [follows_answer_format(*sample_answers(run, instruction, 1, rng)[0])
                 for instruction, _ in held_out_pairs]
    return {"answer_loss": mean_token_loss(run, inputs, targets, batch_size), "format_rate": float(np.mean(formatted))}


def reward_figures(run, instructions, reward_fn, samples_per_prompt, rng, prefix="reward"):
    """Mean reward, and of each component, of sampled answers to the instructions."""
    answers = [text for instruction in instructions
               for text, _ in sample_answers(run, instruction, samples_per_prompt, rng)]
    totals, components = score(reward_fn, answers)
    return {f"{prefix}_mean": float(np.mean(totals)),
            **{f"{prefix}/{name}": float(np.mean(values)) for name, values in components.items()}}


# ---------------------------------------------------------------------------- stage 1: pretraining
def pretrain(run, settings, train_tokens, validation_tokens, eval_windows):
    """Next-character prediction on the corpus.

    Each step draws batch_size windows of context_length + 1 characters at random offsets of the
    training text and minimises the mean cross-entropy of every next character (AdamW, global
    gradient-norm clipping, dropout on). Every eval_every steps the validation loss, bits per
    character and perplexity are measured on fixed, evenly spread windows of the validation text.
    """
    backend, model, T = run.backend, run.model, run.config.context_length

    def make_loss(rng):
        backend.set_training(model, True)
        inputs, targets = random_windows(train_tokens, settings.batch_size, T, rng)
        weights = np.full(targets.shape, 1.0 / targets.size)  # mean over all positions
        mine = backend.share(len(inputs))  # this rank's rows (all of them in one process)
        return backend.weighted_nll(backend.forward(model, inputs[mine]), targets[mine], weights[mine]), {}

    def evaluate():
        backend.set_training(model, False)
        return language_model_figures(run, validation_tokens, eval_windows, settings.batch_size, "val")

    return train_loop(run, "pretrain", settings, make_loss, evaluate)


# ---------------------------------------------------------------------------- stage 2: SFT
def sft(run, settings, train_pairs, held_out_pairs, answer_chars=None):
    """Supervised fine-tuning on "Instruction: ...\\nAnswer: ...\\n" examples, from the pretrained weights.

    Each step takes batch_size pairs at random (with replacement), and minimises the cross-entropy of
    the answer tokens only: the instruction is context, not a target. The answer's closing newline is
    a target, so the model learns where an answer ends. Each answer character is trained in the window
    that sampling will show the model when it writes that character (``data.sft_windows``): the last
    context_length characters before it. Of the characters that need a window of their own, answer_chars
    per example are drawn at random (all when None), weighted so that the loss estimates the mean over every
    answer character of the batch. The vocabulary is the
    pretraining one, so no weight is re-initialised. Evaluation: answer-only loss on the held-out pairs,
    and the share of held-out prompts whose sample is a well-formed answer (format_rate).
    """
    backend, model = run.backend, run.model

    def make_loss(rng):
        backend.set_training(model, True)
        chosen = [train_pairs[i] for i in rng.integers(0, len(train_pairs), settings.batch_size)]
        inputs, targets, weights = sft_windows(chosen, run.tokenizer, run.config.context_length, rng, answer_chars)
        mine = backend.share(len(inputs))
        return backend.weighted_nll(backend.forward(model, inputs[mine]), targets[mine], weights[mine]), {}

    def evaluate():
        backend.set_training(model, False)
        return answer_figures(run, held_out_pairs, settings.batch_size, stream(run.seed, "sft/evaluation"))

    return train_loop(run, "sft", settings, make_loss, evaluate)
