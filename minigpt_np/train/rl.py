"""The RL stage: REINFORCE on the policy's own samples, with baselines, a KL leash and diagnostics.

One step (``reinforce_step``), in words, each part a function:

1. Rollouts (``rollout``). P prompts x G samples, all advanced together by ``sampling.generate`` (one
   batched forward per generated character), at the run's temperature, top-k and context crop. A
   sample ends at the end-of-answer newline (which is part of the action) or at max_new_tokens.
2. Rewards (``rewards.score``). ``reward(answer)`` returns named components; their sum is the reward r.
3. Shaping (``shape_rewards``) and advantages A (``group_advantages``, each estimator in
   ``advantages``), optionally after subtracting from r a KL penalty and a penalty
   for an answer cut off at max_new_tokens (``missing_stop_penalty``: the reward itself can score a
   cut-off answer well, and without it a policy can learn never to finish; the logged reward is r),
   and after splitting the reward of an answer given k times in its group k ways (``split_duplicates``:
   a policy that says one best answer again and again stops being paid for each copy).
4. Loss (``accumulate_policy_gradient``, with ``token_weights``), with the log-probabilities
   recomputed for exactly the contexts that were sampled (``policy_windows``) under the same
   distribution (temperature, top-k truncation, crop):

       loss = -(1/N) sum_i A_i * agg_t log p(a_it | c_it)                  policy gradient
              + beta * (1/T) sum_it KL(pi(.|c_it) || pi_sft(.|c_it))       if kl_mode == "loss"
              - entropy_coef * (1/T) sum_it H(pi(.|c_it))                  entropy bonus

   N = P*G samples, T = number of sampled tokens, agg_t = sum over the answer's tokens
   ("sequence_sum") or their mean ("sequence_mean"). With sequence_sum a longer answer carries
   more terms, so its advantage moves more log-probability: a length bias worth knowing, since
   the original reward has a length term. sequence_mean removes it.
5. Metrics (``step_metrics``): reward, KL, entropy and the samples' metrics, of the whole rollout.

The windows are processed in pieces of at most ``windows_per_pass`` (``accumulate_policy_gradient``):
each piece's part of the loss is back-propagated at once and the gradients add up, so the memory is
that of one piece, whatever the number of samples.

KL and entropy are exact: summed over the whole vocabulary at every sampled context (the vocabulary
is small), for the models' own next-character distributions (softmax of the logits, temperature 1,
no truncation; the sampler transforms both models' distributions the same way). As a loss term,
the per-token KL is an exact (zero-variance) estimate of the sequence-level KL divided by its
length, at the contexts the policy visited; its gradient treats those contexts as fixed. As a
reward penalty (kl_mode "reward"), each answer's r becomes r - beta * sum_t KL_t (detached).
Dropout is off throughout, so the sampled and the optimised distributions are the same.
"""
from dataclasses import dataclass

import numpy as np

from ..functional import log_softmax_array
from .data import IGNORE, format_prompt, policy_windows
from .evaluation import reward_metrics, sample_metrics, sample_records
from .metrics import MetricsLog
from .rewards import score
from .runner import stream, train_loop
from .sampling import generate

ADVANTAGES = ("none", "moving_average", "group_mean", "rloo", "group_zscore")
ZSCORE_EPS = 1e-6
KEPT_STEPS = 20  # rl/samples.jsonl keeps every answer of the stage's last KEPT_STEPS steps (and more)


@dataclass(kw_only=True)
class RLSettings:
    """What one RL step does; every field named (the run's values come from its PipelineSettings, through
    ``settings.rl_settings``; ``RLSettings.plain`` is the textbook method, for experiments and tests)."""
    samples_per_prompt: int  # G
    prompts_per_step: int  # P
    advantage: str  # one of ADVANTAGES
    baseline_decay: float  # moving_average: b <- decay * b + (1 - decay) * mean(r)
    kl_coef: float  # beta
    kl_mode: str  # "loss" or "reward"
    entropy_coef: float
    aggregation: str  # "sequence_sum" or "sequence_mean"
    missing_stop_penalty: float  # subtracted from the reward of an answer cut off at max_new_tokens
    windows_per_pass: int  # policy windows per forward/backward piece (memory: one piece's graph)
    split_duplicates: bool  # an answer given k times in its group trains on r / k

    @classmethod
    def plain(cls, **changes):
        """REINFORCE with a group-mean baseline and nothing else: 8 samples of one prompt, no KL, no
        entropy bonus, no shaping; ``changes`` set any field."""
        return cls(**{**dict(samples_per_prompt=8, prompts_per_step=1, advantage="group_mean", baseline_decay=0.9,
                             kl_coef=0.0, kl_mode="loss", entropy_coef=0.0, aggregation="sequence_sum",
                             missing_stop_penalty=0.0, windows_per_pass=128, split_duplicates=False), **changes})

    def __post_init__(self):
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"unknown advantage {self.advantage!r}; choose one of {', '.join(ADVANTAGES)}")
        if self.advantage in ("group_mean", "rloo", "group_zscore") and self.samples_per_prompt < 2:
            raise ValueError(f"the {self.advantage} advantage needs at least 2 samples per prompt")
        if self.kl_mode not in ("loss", "reward"):
            raise ValueError(f"kl_mode must be loss or reward, got {self.kl_mode!r}")
        if self.aggregation not in ("sequence_sum", "sequence_mean"):
            raise ValueError(f"aggregation must be sequence_sum or sequence_mean, got {self.aggregation!r}")
        if self.windows_per_pass < 1:
            raise ValueError(f"windows_per_pass must be at least 1, got {self.windows_per_pass}")
        if not self.missing_stop_penalty >= 0:
            raise ValueError(f"missing_stop_penalty must be >= 0, got {self.missing_stop_penalty}")


# ---------------------------------------------------------------------------- advantages
def split_among_duplicates(rewards, answers):
    """r_i / k_i, k_i the number of answers of the group equal to answer i (itself included): the
    reward of an answer the policy gives k times is shared among its copies, so a collapse onto one
    answer pays one answer's reward, not k."""
    copies = {}
    for answer in answers:
        copies[answer] = copies.get(answer, 0) + 1
    return np.asarray(rewards, dtype=np.float64) / np.array([copies[answer] for answer in answers])


def advantages(rewards, method, baseline=0.0):
    """Advantages of one prompt's group of G rewards.

    none            A_i = r_i                                the original: no baseline
    moving_average  A_i = r_i - b                            b: a running mean of past rewards
    group_mean      A_i = r_i - mean(r)                      the group is its own baseline
    rloo            A_i = r_i - mean(r_j, j != i)            leave-one-out: the baseline does not
                        = G/(G-1) * (r_i - mean(r))          depend on r_i, so the gradient is unbiased
    group_zscore    A_i = (r_i - mean(r)) / (std(r) + eps)   also rescales each group to unit spread

    A group whose rewards are all equal gets zero advantage from every method with a group baseline:
    it carries no signal.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    G = len(rewards)
    if method == "none":
        return rewards.copy()
    if method == "moving_average":
        return rewards - baseline
    centred = rewards - rewards.mean()
    if method == "group_mean":
        return centred
    if method == "rloo":
        return centred * (G / (G - 1))
    if method == "group_zscore":
        return centred / (rewards.std() + ZSCORE_EPS)
    raise ValueError(f"unknown advantage {method!r}")


# ---------------------------------------------------------------------------- exact KL and entropy
def kl_and_entropy(policy_logits, reference_logits):
    """Per position: KL(p || q) = sum_v p_v (log p_v - log q_v) and H(p) = -sum_v p_v log p_v,
    with p = softmax(policy_logits), q = softmax(reference_logits), in float64.

    These are the logged metrics (and the KL of kl_mode "reward"), from any backend's logits as numpy;
    the same terms as a loss with a gradient are ``Backend.kl_entropy``, on each backend's own graph."""
    log_p = log_softmax_array(np.asarray(policy_logits, dtype=np.float64))
    log_q = log_softmax_array(np.asarray(reference_logits, dtype=np.float64))
    p = np.exp(log_p)
    return (p * (log_p - log_q)).sum(axis=-1), -(p * log_p).sum(axis=-1)


# ---------------------------------------------------------------------------- the sampled contexts
def accumulate_policy_gradient(backend, model, batches, reference_logits, sample_weights, temperature, top_k,
                               kl_weight, entropy_weight):
    """The REINFORCE loss of the module docstring, its gradient added to the parameters piece by piece.

    batches: ``policy_windows`` pieces; reference_logits: the frozen model's logits on each piece;
    sample_weights (N,): the policy-gradient weight of every sampled token of each sample (indexed by
    the pieces' sample indices). The logits
    are computed at the positions that have targets (the last L of each window) only.
    Each piece is forwarded, its part of the loss built and back-propagated at once, so only one
    piece's graph is alive at a time (the memory of a piece, not of the whole rollout); the sum of
    the parts' gradients is the whole loss's gradient. Returns the loss value and, per sampled
    token, the KL to the reference, the entropy and the index of its sample.
    """
    total, token_kl, token_entropy, token_sample = 0.0, [], [], []
    for piece, ((ids, targets, index), reference) in enumerate(zip(batches, reference_logits)):
        with backend.gradient_sync(model, sync=piece == len(batches) - 1):  # ranks add up at the last piece
            logits = backend.forward(model, ids, last=targets.shape[1])  # (rows, L, V)
            counted = targets != IGNORE
            kl, entropy = kl_and_entropy(backend.numpy(logits)[counted], reference[counted])
            token_kl.append(kl)
            token_entropy.append(entropy)
            token_sample.append(np.broadcast_to(index[:, None], targets.shape)[counted])
            weights = np.where(counted, sample_weights[index][:, None], 0.0)  # (rows, L)
            part = backend.weighted_nll(logits, targets, weights, temperature, top_k)
            if kl_weight or entropy_weight:
                part = part + backend.kl_entropy(logits, reference, counted * kl_weight, counted * entropy_weight)
            total += backend.backward(part)
    return total, np.concatenate(token_kl), np.concatenate(token_entropy), np.concatenate(token_sample)


# ---------------------------------------------------------------------------- diagnostics


def keep_final_samples(run, step, records):
    """Add the final policy's answers to rl/samples.jsonl, marked "final"."""
    run.stage_folder("rl").mkdir(parents=True, exist_ok=True)
    MetricsLog(run.stage_folder("rl") / "samples.jsonl", run.notify, writes=run.writes).log_many(
        "rl", step, [{"final": True, **record} for record in records])


# ---------------------------------------------------------------------------- one step, function by function
@dataclass
class Rollout:
    """One step's samples. Every rank holds all N answers (so a group's baseline sees the whole group);
    the windows are those of this rank's samples (all N in one process), which it learns from, each
    naming its sample by its index among the N."""
    instructions: list  # (N,) the instruction each sample answers
    answers: list  # (N,) the decoded answers, without the stop newline
    lengths: np.ndarray  # (N,) sampled tokens per answer (the stop newline included)
    finished: np.ndarray  # (N,) True where the answer ended with the newline
    windows: list  # ``policy_windows`` pieces of this rank's samples: (ids, targets, sample index among N)


def rollout(run, instructions, G, rng, windows_per_pass):
    """Step 1: G answers to each instruction, all advanced together (``sampling.generate``), at the
    run's temperature, top-k and context crop, and the windows the sampler showed the model."""
    backend, sampling, T = run.backend, run.sampling, run.config.context_length
    prompt_ids = [run.tokenizer.encode(format_prompt(instruction)) for instruction in instructions]
    rows = backend.share(len(instructions) * G)  # under torchrun: this rank's samples; else all
    generated, lengths, finished = generate(run.predict, prompt_ids, G, sampling.max_new_tokens, T,
                                            sampling.temperature, sampling.top_k, rng, run.stop_id, rows=rows)
    generated, lengths, finished = generated[rows], lengths[rows], finished[rows]
    answers, all_lengths, all_finished = map(list, zip(*backend.all_gather(  # every rank gets every answer
        (run.tokenizer.decode(row[: n - int(done)]), int(n), bool(done))
        for row, n, done in zip(generated, lengths, finished))))
    sample_prompts = [ids for ids in prompt_ids for _ in range(G)]
    windows = [(ids, targets, rows.start + index)  # the sample's index among all N, not among this rank's
               for ids, targets, index in policy_windows(sample_prompts[rows], generated, lengths, T, windows_per_pass)]
    return Rollout([instruction for instruction in instructions for _ in range(G)], answers,
                   np.array(all_lengths), np.array(all_finished), windows)


def answer_kl(run, rollout, reference_logits):
    """Each answer's KL to the reference, summed over its tokens, before the update (kl_mode "reward")."""
    kl_sum = np.zeros(len(rollout.answers))
    for (ids, targets, index), reference_part in zip(rollout.windows, reference_logits):
        counted = targets != IGNORE
        kl, _ = kl_and_entropy(run.predict(ids, targets.shape[1])[counted], reference_part[counted])
        np.add.at(kl_sum, np.broadcast_to(index[:, None], targets.shape)[counted], kl)
    return run.backend.all_sum(kl_sum)


def shape_rewards(rewards, rollout, G, settings, kl_per_answer=None):
    """Step 3: the reward each answer trains on. An answer given k times in its group gets r / k
    (split_duplicates); one cut off at max_new_tokens loses missing_stop_penalty; with kl_mode "reward",
    each answer loses kl_coef x its KL to the reference."""
    shaped = rewards
    if settings.split_duplicates:
        shaped = np.concatenate([split_among_duplicates(rewards[g:g + G], rollout.answers[g:g + G])
                                 for g in range(0, len(rewards), G)])
    shaped = shaped - settings.missing_stop_penalty * ~rollout.finished
    if kl_per_answer is not None:
        shaped = shaped - settings.kl_coef * kl_per_answer
    return shaped


def group_advantages(shaped, G, method, baseline):
    """Step 3: each group's advantages (``advantages``), the groups one after the other."""
    return np.concatenate([advantages(shaped[g:g + G], method, baseline) for g in range(0, len(shaped), G)])


def moving_average(state, shaped, decay):
    """The moving-average baseline after a step: b <- decay * b + (1 - decay) * mean(r), starting at the
    first step's mean."""
    decay = decay if state["baseline_steps"] else 0.0
    return {**state, "baseline": decay * state["baseline"] + (1 - decay) * float(shaped.mean()),
            "baseline_steps": state["baseline_steps"] + 1}


def token_weights(advantage, lengths, aggregation):
    """The policy-gradient weight of every sampled token of each answer: A_i / N (sequence_sum), also
    divided by the answer's length for sequence_mean."""
    per_token = advantage / len(advantage)
    if aggregation == "sequence_mean":
        per_token = per_token / np.maximum(lengths, 1)
    return per_token


def step_metrics(rewards, components, G, rollout, token_kl, token_entropy, token_sample, loss_value, backend):
    """Step 5: what the step logs: the reward and its components, the share of groups with no signal,
    KL and entropy of the whole rollout (per character and per answer), and the samples' metrics."""
    N, n_tokens = len(rewards), int(rollout.lengths.sum())
    sample_kl, sample_entropy = backend.all_sum([  # each sample's, summed over its tokens; the ranks' added
        np.bincount(token_sample, token_kl, minlength=N), np.bincount(token_sample, token_entropy, minlength=N)])
    return {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()),
            **{f"reward/{name}": float(np.mean(v)) for name, v in components.items()},
            "zero_std_frac": float(np.mean(rewards.reshape(-1, G).std(axis=1) == 0)),
            "kl": float(sample_kl.sum() / n_tokens), "entropy": float(sample_entropy.sum() / n_tokens),
            "kl_per_answer": float(sample_kl.mean()),
            **sample_metrics(rollout.answers, rollout.finished), "policy_loss": float(backend.all_sum(loss_value))}


def reinforce_step(run, reference, instructions, reward_fn, settings, state, rng):
    """One REINFORCE step, in the order of the module docstring; its gradient is added to the model's.
    Returns (metrics, the records of its answers, the carried state)."""
    backend, model, sampling = run.backend, run.model, run.sampling
    G = settings.samples_per_prompt
    group = rollout(run, instructions, G, rng, settings.windows_per_pass)                       # 1. rollouts
    rewards, components = score(reward_fn, group.answers, group.instructions)                    # 2. rewards
    rewards = np.asarray(rewards)
    reference_logits = [backend.predict(reference, ids, targets.shape[1]) for ids, targets, _ in group.windows]
    kl_per_answer = (answer_kl(run, group, reference_logits)
                     if settings.kl_mode == "reward" and settings.kl_coef else None)
    shaped = shape_rewards(rewards, group, G, settings, kl_per_answer)                          # 3. shaping
    advantage = group_advantages(shaped, G, settings.advantage, state["baseline"])               # 3. advantages
    if settings.advantage == "moving_average":
        state = moving_average(state, shaped, settings.baseline_decay)
    n_tokens = int(group.lengths.sum())
    loss_value, token_kl, token_entropy, token_sample = accumulate_policy_gradient(              # 4. the loss
        backend, model, group.windows, reference_logits,
        token_weights(advantage, group.lengths, settings.aggregation), sampling.temperature,
        sampling.top_k, settings.kl_coef / n_tokens if settings.kl_mode == "loss" else 0.0,
        settings.entropy_coef / n_tokens)
    metrics = step_metrics(rewards, components, G, group, token_kl, token_entropy, token_sample,  # 5. metrics
                           loss_value, backend)
    return metrics, sample_records(group.instructions, group.answers, group.finished, rewards, components), state


# ---------------------------------------------------------------------------- the stage
def reinforce(run, settings, rl_settings, prompts, reward_fn, held_out_prompts, reference_weights):
    """The RL stage: ``reinforce_step`` settings.steps times, from the SFT policy, whose frozen copy
    (reference_weights) the KL is measured against. Each step draws prompts_per_step of the prompts.
    The answers of the first step, of every eval_every-th and of the last KEPT_STEPS steps go to
    rl/samples.jsonl (how the policy moved); every eval_every steps the held-out prompts' reward is measured."""
    backend, model = run.backend, run.model
    reference = backend.create_model(run.config, run.seed)
    backend.load_state_dict(reference, reference_weights)
    backend.set_training(reference, False)
    # the moving-average baseline and the steps done, saved with checkpoints
    state = {"baseline": 0.0, "baseline_steps": 0, "step": 0}
    run.stage_folder("rl").mkdir(parents=True, exist_ok=True)
    samples_log = MetricsLog(run.stage_folder("rl") / "samples.jsonl", run.notify, writes=run.writes)

    def make_loss(rng):
        state["step"] += 1
        backend.set_training(model, False)  # dropout off: the sampled and the optimised policy are one
        chosen = rng.choice(len(prompts), size=rl_settings.prompts_per_step,
                            replace=len(prompts) < rl_settings.prompts_per_step)
        metrics, records, carried = reinforce_step(run, reference, [prompts[c] for c in chosen], reward_fn,
                                                   rl_settings, state, rng)
        state.update(carried)
        step = state["step"]
        if step == 1 or step % settings.eval_every == 0 or step > settings.steps - KEPT_STEPS:
            # a resumed stage redoes the steps after its checkpoint: their answers from before the stop go first
            samples_log.truncate_after("rl", state["step"] - 1)
            samples_log.log_many("rl", state["step"], records)
        return None, metrics  # the gradients are accumulated already

    def evaluate():
        backend.set_training(model, False)
        return reward_metrics(run, held_out_prompts, reward_fn, 4, stream(run.seed, "rl/evaluation"),
                              prefix="heldout_reward")

    return train_loop(run, "rl", settings, make_loss, evaluate, loss_name="policy_loss", state=state)
