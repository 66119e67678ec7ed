"""The reward model: which of two answers is the better one, learnt from preference pairs (preferences.py),
as RLHF learns its reward instead of writing it by hand.

The model (``minigpt_np.model.RewardModel``) is the SFT policy's body, ln_f included, with a scalar head
read at the answer's last character; the head starts at 0, so at first every answer gets reward 0.

Bradley-Terry: the chosen answer c is preferred to the rejected answer r with probability
sigmoid(r(c) - r(r)), and training maximises the likelihood of the preferences seen:

    L = -(1/N) sum_i log sigmoid(d_i),   d_i = r(c_i) - r(r_i)

This is logistic regression whose input is the reward difference and whose label is always "the chosen
one wins". With d log sigmoid(d) / d d = sigmoid(-d):

    d L / d r(c_i) = -(1/N) sigmoid(-d_i),    d L / d r(r_i) = +(1/N) sigmoid(-d_i)

A pair ranked right by a wide margin (d_i >> 0) adds almost nothing; one ranked wrong pushes the two
rewards apart with up to 1/N each. Only differences enter the loss: a constant added to every reward
changes nothing, and the head's bias gets no gradient. The scale of the rewards is free too: it grows
until the pairs are ranked with confidence, held back by weight decay.
"""
import numpy as np

from .evaluation import sample_answers
from .preferences import KINDS, Preference, reward_batch, reward_text
from .rewards import original_reward
from .runner import train_loop


def sft_sample_preferences(run, pairs, n, rng):
    """The SFT policy's own answers as rejected answers: n sampled answers to each pair's instruction,
    each against the answer written for it (an empty answer or the written one itself is left out), each
    closed by the newline as the reward model reads every answer."""
    answers = sample_answers(run, [instruction for instruction, _ in pairs], n, rng)
    made = []
    for index, (text, _) in enumerate(answers):
        instruction, answer = pairs[index // n]
        if text.strip() and text.strip() != answer.strip():
            made.append(Preference(instruction, f" {answer}\n", text + "\n", "sft_sample"))
    return made


def score_texts(run, texts, batch_size):
    """The reward model's reward of each text, as a numpy array, batch_size texts at a time."""
    rewards = [run.backend.predict_rewards(run.model, *reward_batch(run.tokenizer, texts[start:start + batch_size],
                                                                    run.config.context_length))
               for start in range(0, len(texts), batch_size)]
    return np.concatenate(rewards).astype(np.float64) if rewards else np.zeros(0)


def preference_metrics(run, preferences, batch_size):
    """On held-out preference pairs: the loss, the accuracy (the share whose chosen answer gets the higher
    reward) and the mean margin r(chosen) - r(rejected), overall and per kind of rejected answer."""
    chosen = score_texts(run, [reward_text(p.instruction, p.chosen) for p in preferences], batch_size)
    rejected = score_texts(run, [reward_text(p.instruction, p.rejected) for p in preferences], batch_size)
    margin = chosen - rejected
    metrics = {"pref_loss": float(np.mean(np.logaddexp(0.0, -margin))),  # -log sigmoid(d) = log(1 + exp(-d))
               "pref_accuracy": float(np.mean(margin > 0)), "pref_margin": float(np.mean(margin))}
    kinds = np.array([p.kind for p in preferences])
    for kind in KINDS:
        if (kinds == kind).any():
            metrics[f"pref_accuracy/{kind}"] = float(np.mean(margin[kinds == kind] > 0))
            metrics[f"pref_margin/{kind}"] = float(np.mean(margin[kinds == kind]))
    return metrics


class LearnedReward:
    """RL's reward from the trained reward model (``--reward learned``): an answer's reward is the model's
    reward of its text, the prompt and the answer closed by its newline; one component, "learned".
    It reads each answer's instruction (``rewards.score`` gives them: ``score_answers``)."""

    def __init__(self, run, batch_size=64):
        self.run, self.batch_size = run, batch_size  # run: the reward model's Run

    def rewards(self, instructions, answers):
        """The reward model's reward of each answer (as sampled: a space first, no newline), a numpy array."""
        self.run.backend.set_training(self.run.model, False)
        texts = [reward_text(instruction, answer + "\n") for instruction, answer in zip(instructions, answers)]
        return score_texts(self.run, texts, self.batch_size)

    def score_answers(self, instructions, answers):
        rewards = [float(r) for r in self.rewards(instructions, answers)]
        return rewards, {"learned": rewards}


class CombinedReward:
    """``--reward combined``: the original reward's intent, paid only where the reward model judges the answer
    a tagline. Each component of the original reward (coffee, "!", 8 to 20 words; rewards.py) is multiplied by

        gate = sigmoid(r(answer) - r_written)

    r_written: the mean reward of the written answers to the training instructions. Under Bradley-Terry,
    sigmoid(r(a) - r(b)) is the probability that a is preferred to b, so the gate is the reward model's
    probability that the answer beats a written answer of average reward: about 0.5 for an answer it rates
    like the written ones, near 0 for one it rates like a rejected one, whatever offset and scale its rewards
    were learnt at (only differences mean anything in them). At most 2.0, as the original."""

    def __init__(self, learned, written_pairs):
        self.learned = learned  # a LearnedReward
        instructions = [instruction for instruction, _ in written_pairs]
        self.r_written = float(np.mean(learned.rewards(instructions, [f" {answer}" for _, answer in written_pairs])))

    def score_answers(self, instructions, answers):
        gates = 1.0 / (1.0 + np.exp(-(self.learned.rewards(instructions, answers) - self.r_written)))
        components = {}
        for answer, gate in zip(answers, gates):
            for name, value in original_reward(answer).items():
                components.setdefault(name, []).append(float(value * gate))
        totals = [float(sum(values)) for values in zip(*components.values())] if components else []
        return totals, components


def learned_reward(kind, reward_run, written_pairs):
    """The reward RL trains on from a trained reward model (reward_run): kind "learned" or "combined"."""
    learned = LearnedReward(reward_run)
    return learned if kind == "learned" else CombinedReward(learned, written_pairs)


def reward_modeling(run, settings, train_preferences, held_out_preferences):
    """Train the reward model (run.model, a RewardModel) on preference pairs with the Bradley-Terry loss.

    Each step takes batch_size pairs at random (with replacement), reads the reward of the chosen and of
    the rejected answer (each its prompt and answer, the last context_length characters), and minimises
    -mean log sigmoid(r(chosen) - r(rejected)) (AdamW, global gradient-norm clipping, dropout on). Every
    eval_every steps: ``preference_metrics`` on the held-out pairs (made from the held-out SFT answers).
    """
    backend, model, T = run.backend, run.model, run.config.context_length

    def make_loss(rng):
        backend.set_training(model, True)
        batch = [train_preferences[i] for i in rng.integers(0, len(train_preferences), settings.batch_size)]
        mine = batch[backend.share(len(batch))]  # this rank's pairs (all of them in one process)
        chosen = reward_batch(run.tokenizer, [reward_text(p.instruction, p.chosen) for p in mine], T)
        rejected = reward_batch(run.tokenizer, [reward_text(p.instruction, p.rejected) for p in mine], T)
        loss = backend.preference_loss(backend.rewards(model, *chosen), backend.rewards(model, *rejected),
                                       1.0 / len(batch))
        return loss, {}

    def evaluate():
        backend.set_training(model, False)
        return preference_metrics(run, held_out_preferences, settings.batch_size)

    return train_loop(run, "rm", settings, make_loss, evaluate)
