"""The three training stages, written once against the Backend interface (backend.py).

Each stage is one function whose docstring states its algorithm; they share ``train_loop``, which
owns everything that is not the algorithm: the optimizer, deterministic per-step randomness,
progress, metrics, checkpoints, resuming, Ctrl-C and the NaN guard.

Determinism: the batch (or rollout) of step s of stage k comes from a random generator seeded with
(seed, k, s), and the dropout stream is restarted from it too. A run resumed from step s therefore
draws exactly what an unbroken run would have drawn, and reports the same losses.
"""
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import functional as F
from .autograd import Tensor
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .data import IGNORE, evaluation_windows, format_prompt, random_windows, sft_batch
from .rewards import score
from .sampling import generate

STAGES = ("pretrain", "sft", "rl")


class TrainingDiverged(RuntimeError):
    """The loss or the gradient became NaN or infinite; the last good checkpoint is kept."""


class StageInterrupted(RuntimeError):
    """Ctrl-C: the stage saved its progress and stopped; --resume continues it."""


@dataclass
class StageSettings:
    steps: int
    lr: float
    batch_size: int
    eval_every: int
    checkpoint_every: int = 0  # 0: only at the end of the stage and on Ctrl-C
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    log_every: int = 10


@dataclass
class SamplingSettings:
    temperature: float = 0.6
    top_k: int = 10
    max_new_tokens: int = 80


@dataclass
class RLSettings:
    samples_per_prompt: int = 8  # G: completions per prompt; 1 with advantage "none" is the original
    prompts_per_step: int = 1  # P: prompts per step, drawn from the RL prompts
    advantage: str = "group_mean"  # "group_mean": r - mean of the prompt's group; "none": r itself


class Run:
    """What every stage works on: the backend and model, vocabulary, run folder, metrics and seed."""

    def __init__(self, backend, model, config, tokenizer, folder, metrics, seed, sampling, resume=False,
                 progress=True, notify=print):
        self.backend, self.model, self.config, self.tokenizer = backend, model, config, tokenizer
        self.folder, self.metrics, self.seed, self.sampling = Path(folder), metrics, seed, sampling
        self.resume, self.progress, self.notify = resume, progress, notify
        self.stop_id = tokenizer.index["\n"]

    def stage_folder(self, stage):
        return self.folder / stage

    def predict(self, ids):
        return self.backend.predict(self.model, ids)

    def stage_checkpoint(self, stage):
        """The stage's checkpoint in this run folder, or None if there is none yet."""
        folder = self.stage_folder(stage)
        if not (folder / "checkpoint.json").exists():
            return None
        return load_checkpoint(folder, expect_config=self.config, expect_tokenizer=self.tokenizer)

    def save(self, stage, step, complete, optimizer=None, metrics=None, extra=None):
        arrays, steps = (self.backend.optimizer_state(self.model, optimizer) if optimizer is not None
                         else (None, None))
        save_checkpoint(self.stage_folder(stage), self.backend.state_dict(self.model), self.config,
                        self.tokenizer, stage=stage, step=step, complete=complete, metrics=metrics,
                        optimizer_arrays=arrays, optimizer_steps=steps,
                        extra={"backend": self.backend.name, "seed": self.seed, **(extra or {})})


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

    return tqdm(total=total, initial=initial, desc=f"{stage:<8}", disable=not run.progress, mininterval=0.5,
                dynamic_ncols=True, leave=True)


def train_loop(run, stage, settings, make_loss, evaluate=None, loss_name="train_loss"):
    """Run steps 1..settings.steps of a stage (continuing a saved partial stage when resuming).

    make_loss(rng) -> (loss, figures): the step's loss handle and any other figures of the step;
    the loss's value is logged as loss_name. evaluate() -> figures, every eval_every steps and at the end.
    Returns (figures of the last evaluation, wall time of the stage in seconds).
    """
    backend, model = run.backend, run.model
    optimizer = backend.create_optimizer(model, settings.lr, settings.weight_decay)
    start, wall_time, last_eval = 0, 0.0, {}
    partial = run.stage_checkpoint(stage) if run.resume else None
    if partial is not None:
        backend.load_state_dict(model, partial.weights)
        backend.load_optimizer_state(model, optimizer, partial.optimizer_arrays, partial.meta["optimizer_steps"])
        start, wall_time = partial.step, partial.meta.get("wall_time", 0.0)
        last_eval = partial.meta.get("metrics", {})
        run.notify(f"{stage}: resuming at step {start} of {settings.steps}")
    run.metrics.truncate_after(stage, start)
    saved_step = start

    with _CtrlC() as ctrl_c, _progress_bar(run, stage, settings.steps, start) as bar:
        for step in range(start + 1, settings.steps + 1):
            if ctrl_c.requested:
                run.save(stage, step - 1, False, optimizer, last_eval, {"wall_time": wall_time})
                raise StageInterrupted(f"{stage}: stopped at step {step - 1} of {settings.steps} and saved to "
                                       f"{run.stage_folder(stage)}; run again with --resume to continue")
            started = time.perf_counter()
            rng = np.random.default_rng([run.seed, STAGES.index(stage), step])
            backend.seed_dropout(model, int(rng.integers(2**62)))
            loss, figures = make_loss(rng)
            figures[loss_name] = backend.item(loss)
            if not math.isfinite(figures[loss_name]):
                raise TrainingDiverged(f"{stage}: the loss became {figures[loss_name]} at step {step}; stopped "
                                       f"before updating, the last good checkpoint (step {saved_step}) is kept")
            figures["grad_norm"] = backend.optimizer_step(model, optimizer, loss, settings.max_grad_norm)
            if not math.isfinite(figures["grad_norm"]):
                raise TrainingDiverged(f"{stage}: the gradient norm became {figures['grad_norm']} at step {step}; "
                                       f"the last good checkpoint (step {saved_step}) is kept")
            if step == 1 or step % settings.log_every == 0 or step == settings.steps:
                run.metrics.log(stage, step, **figures)
            if evaluate is not None and (step % settings.eval_every == 0 or step == settings.steps):
                last_eval = evaluate()
                run.metrics.log(stage, step, **last_eval)
            wall_time += time.perf_counter() - started  # the step and its evaluation
            bar.update(1)
            bar.set_postfix({k: f"{v:.3f}" for k, v in {**figures, **last_eval}.items()
                             if k in (loss_name, "val_loss", "answer_loss", "reward_mean")})
            if settings.checkpoint_every and step % settings.checkpoint_every == 0 and step < settings.steps:
                run.save(stage, step, False, optimizer, last_eval, {"wall_time": wall_time})
                saved_step = step
    return last_eval, wall_time


# ---------------------------------------------------------------------------- evaluation (no gradients)
def mean_token_loss(run, inputs, targets, batch_size):
    """Mean cross-entropy (nats per predicted token) over all counted targets, in float64."""
    total, count = 0.0, 0
    for begin in range(0, len(inputs), batch_size):
        logits = run.predict(inputs[begin:begin + batch_size]).astype(np.float64)
        chunk = targets[begin:begin + batch_size]
        total += F.cross_entropy(Tensor(logits), chunk, ignore_index=IGNORE, reduction="sum").item()
        count += int((chunk != IGNORE).sum())
    return total / max(count, 1)


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
    """answer_loss (answer-only cross-entropy) and format_rate on held-out instruction/answer pairs."""
    inputs, targets = sft_batch(held_out_pairs, run.tokenizer, run.config.context_length)
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
        return backend.weighted_nll(backend.forward(model, inputs), targets, weights), {}

    def evaluate():
        backend.set_training(model, False)
        return language_model_figures(run, validation_tokens, eval_windows, settings.batch_size, "val")

    return train_loop(run, "pretrain", settings, make_loss, evaluate)


# ---------------------------------------------------------------------------- stage 2: SFT
def sft(run, settings, train_pairs, held_out_pairs):
    """Supervised fine-tuning on "Instruction: ...\\nAnswer: ...\\n" examples, from the pretrained weights.

    Each step takes batch_size pairs at random (with replacement), and minimises the cross-entropy of
    the answer tokens only: the instruction is context, not a target. The answer's closing newline is
    a target, so the model learns where an answer ends. The vocabulary is the pretraining one, so no
    weight is re-initialised. Evaluation: answer-only loss on the held-out pairs, and the share of
    held-out prompts whose sample is a well-formed answer (format_rate).
    """
    backend, model = run.backend, run.model

    def make_loss(rng):
        backend.set_training(model, True)
        chosen = [train_pairs[i] for i in rng.integers(0, len(train_pairs), settings.batch_size)]
        inputs, targets = sft_batch(chosen, run.tokenizer, run.config.context_length)
        answer_mask = targets != IGNORE
        weights = answer_mask / answer_mask.sum()  # mean over answer tokens
        return backend.weighted_nll(backend.forward(model, inputs), targets, weights), {}

    def evaluate():
        backend.set_training(model, False)
        return answer_figures(run, held_out_pairs, settings.batch_size, np.random.default_rng([run.seed, 2_000_003]))

    return train_loop(run, "sft", settings, make_loss, evaluate)


# ---------------------------------------------------------------------------- stage 3: RL
def policy_windows(prompt_ids, generated, lengths, context_length):
    """Forward batches that give every sampled token exactly the context it was sampled from.

    The sampler saw the last context_length tokens before each new token (the crop). Tokens at
    absolute index j <= context_length all saw a prefix of the first window, so one causal forward
    over sequence[:, :context_length] scores them all. Each later token saw its own window
    sequence[:, j - context_length : j]; those windows are stacked into one more batch in which only
    the last position is a target.

    Returns [(ids, targets, sample_index)], targets IGNORE except at sampled tokens (the stop
    newline included, it is part of the action).
    """
    N, Lp = generated.shape[0], len(prompt_ids)
    sequences = np.concatenate([np.tile(prompt_ids, (N, 1)), generated], axis=1)  # (N, Lp + Lg)
    positions = np.arange(sequences.shape[1])
    sampled = (positions >= Lp) & (positions < Lp + lengths[:, None])  # (N, Lp + Lg): tokens the policy drew
    batches = []
    first_T = min(sequences.shape[1] - 1, context_length)
    targets = np.where(sampled[:, 1:first_T + 1], sequences[:, 1:first_T + 1], IGNORE)
    if (targets != IGNORE).any():
        batches.append((sequences[:, :first_T], targets, np.arange(N)))
    later = [j for j in range(context_length + 1, sequences.shape[1]) if sampled[:, j].any()]
    if later:
        ids = np.concatenate([sequences[:, j - context_length:j] for j in later])  # (len(later) * N, T)
        targets = np.full(ids.shape, IGNORE, dtype=np.int64)
        targets[:, -1] = np.concatenate([np.where(sampled[:, j], sequences[:, j], IGNORE) for j in later])
        batches.append((ids, targets, np.tile(np.arange(N), len(later))))
    return batches


def advantages(rewards, method):
    """REINFORCE weights of one prompt's group of samples.

    none:       A_i = r_i (the original: no baseline, every sample pushed up by its raw reward)
    group_mean: A_i = r_i - mean(r), the other samples of the same prompt as the baseline; it keeps
                the gradient unbiased up to a factor (G-1)/G and removes most of its variance.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if method == "none":
        return rewards
    if method == "group_mean":
        return rewards - rewards.mean()
    raise ValueError(f"unknown advantage {method!r}; choose group_mean or none")


def rl(run, settings, rl_settings, prompts, reward_fn, held_out_prompts):
    """REINFORCE on the policy's own samples.

    Each step: take prompts_per_step prompts (P); for each, sample G = samples_per_prompt answers with
    the run's temperature, top-k and context crop, score them with the reward, and compute their
    advantages. Then recompute the log-probability of every sampled token under the same
    distribution (temperature, top-k truncation, crop: see policy_windows) with gradients, and
    minimise

        loss = -(1 / (P G)) * sum_i A_i * sum_t log p(token_it | context_it)

    (summed over an answer's tokens, averaged over answers: a longer answer carries more terms, a
    length bias worth knowing since the reward has a length component). Dropout is off throughout,
    so the sampled and the optimised distributions are the same.
    """
    backend, model, sampling = run.backend, run.model, run.sampling
    if rl_settings.advantage == "group_mean" and rl_settings.samples_per_prompt < 2:
        raise ValueError("the group_mean advantage needs at least 2 samples per prompt (with 1 it is always 0)")
    prompt_ids = [run.tokenizer.encode(format_prompt(p)) for p in prompts]
    G = rl_settings.samples_per_prompt

    def make_loss(rng):
        backend.set_training(model, False)
        chosen = rng.choice(len(prompts), size=rl_settings.prompts_per_step, replace=len(prompts) < rl_settings.prompts_per_step)
        normaliser = 1.0 / (len(chosen) * G)
        loss, all_rewards, all_components, lengths_chars = None, [], {}, []
        for index in chosen:
            generated, lengths, finished = generate(
                run.predict, prompt_ids[index], G, sampling.max_new_tokens, run.config.context_length,
                sampling.temperature, sampling.top_k, rng, run.stop_id)
            answers = [run.tokenizer.decode(row[: n - int(done)]) for row, n, done in zip(generated, lengths, finished)]
            rewards, components = score(reward_fn, answers)
            advantage = advantages(rewards, rl_settings.advantage) * normaliser
            for ids, targets, sample_index in policy_windows(prompt_ids[index], generated, lengths,
                                                             run.config.context_length):
                weights = np.where(targets != IGNORE, advantage[sample_index][:, None], 0.0)
                part = backend.weighted_nll(backend.forward(model, ids), targets, weights,
                                            sampling.temperature, sampling.top_k)
                loss = part if loss is None else loss + part
            all_rewards += rewards
            lengths_chars += [len(a) for a in answers]
            for name, values in components.items():
                all_components.setdefault(name, []).extend(values)
        figures = {"reward_mean": float(np.mean(all_rewards)),
                   "reward_std": float(np.std(all_rewards)), "length_chars": float(np.mean(lengths_chars))}
        figures.update({f"reward/{name}": float(np.mean(v)) for name, v in all_components.items()})
        return loss, figures

    def evaluate():
        backend.set_training(model, False)
        rng = np.random.default_rng([run.seed, 3_000_003])
        return reward_figures(run, held_out_prompts, reward_fn, 4, rng, prefix="heldout_reward")

    return train_loop(run, "rl", settings, make_loss, evaluate, loss_name="policy_loss")
