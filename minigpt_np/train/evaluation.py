"""Evaluation: what every stage is measured by, without gradients; "metrics" are these numbers.

- the language model: cross-entropy, bits per character and perplexity on evenly spread windows of a
  text (``language_model_metrics``);
- answers: the answer-only loss and the format rate on held-out pairs (``answer_metrics``), the reward of
  sampled answers (``reward_metrics``);
- a set of sampled answers: length, truncation, diversity, readability and every reward
  (``sample_metrics``); the final policy's answers to the RL prompt (``policy_samples``);
- after each stage, the same metrics for every stage (``stage_metrics``), and the report's samples.
"""
import math

import numpy as np

from .. import functional as F
from ..autograd import Tensor
from ..functional import log_softmax_array
from .data import IGNORE, evaluation_windows, format_prompt, policy_windows, sft_windows
from .judge import gold_score, judge_metrics, pair_share
from .readability import answer_readability, readability_metrics
from .rewards import REWARDS, score
from .runner import stream
from .sampling import generate


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


def language_model_metrics(run, tokens, max_windows, batch_size, prefix):
    """{prefix_loss, prefix_bpc, prefix_ppl} on evenly spread windows of a text."""
    inputs, targets = evaluation_windows(tokens, run.config.context_length, max_windows)
    loss = mean_token_loss(run, inputs, targets, batch_size)
    return {f"{prefix}_loss": loss, f"{prefix}_bpc": loss / math.log(2), f"{prefix}_ppl": math.exp(loss)}


def sample_answers(run, instruction_or_prompt, n, rng, temperature=None, raw_prompt=False):
    """n sampled continuations of a prompt (or of each of a list of them, prompt by prompt):
    [(text without the stop newline, finished?)]."""
    prompts = instruction_or_prompt if isinstance(instruction_or_prompt, list) else [instruction_or_prompt]
    prompts = [prompt if raw_prompt else format_prompt(prompt) for prompt in prompts]
    sampling = run.sampling
    tokens, lengths, finished = generate(
        run.predict, [run.tokenizer.encode(prompt) for prompt in prompts], n, sampling.max_new_tokens,
        run.config.context_length, sampling.temperature if temperature is None else temperature, sampling.top_k,
        rng, run.stop_id)
    return [(run.tokenizer.decode(row[: length - int(done)]), bool(done))
            for row, length, done in zip(tokens, lengths, finished)]


def follows_answer_format(text, finished):
    """An answer is " <some text>" closed by the newline."""
    return finished and text.startswith(" ") and bool(text.strip())


FORMAT_SAMPLES = 8  # answers to each held-out instruction that the format rate counts


def answer_metrics(run, held_out_pairs, batch_size, rng):
    """answer_loss (answer-only cross-entropy, every answer character in the window sampling gives it) and,
    on FORMAT_SAMPLES answers to each held-out instruction: format_rate (the share that is " <text>" closed
    by the newline), unfinished_rate (cut off at max_new_tokens) and empty_rate (closed at once)."""
    inputs, targets, _ = sft_windows(held_out_pairs, run.tokenizer, run.config.context_length)
    answers = sample_answers(run, [instruction for instruction, _ in held_out_pairs], FORMAT_SAMPLES, rng)
    return {"answer_loss": mean_token_loss(run, inputs, targets, batch_size),
            "format_rate": float(np.mean([follows_answer_format(*answer) for answer in answers])),
            "unfinished_rate": float(np.mean([not done for _, done in answers])),
            "empty_rate": float(np.mean([done and not text.strip() for text, done in answers]))}


def reward_metrics(run, instructions, reward_fn, samples_per_prompt, rng, prefix="reward"):
    """Mean reward, and of each component, of sampled answers to the instructions ({} without a reward)."""
    if reward_fn is None:
        return {}
    answers = [text for instruction in instructions
               for text, _ in sample_answers(run, instruction, samples_per_prompt, rng)]
    totals, components = score(reward_fn, answers, [i for i in instructions for _ in range(samples_per_prompt)])
    return mean_rewards(totals, components, prefix)


def mean_rewards(totals, components, prefix="reward"):
    """{prefix_mean: the mean total, prefix/<component>: the mean of each component} of scored answers."""
    return {f"{prefix}_mean": float(np.mean(totals)),
            **{f"{prefix}/{name}": float(np.mean(values)) for name, values in components.items()}}


FINAL_SAMPLES = 64  # answers sampled from the policy after each stage, for its metrics and the report


def distinct_n(answers, n):
    """Distinct word n-grams over all n-grams in the answers (1.0: no n-gram repeats)."""
    grams = [tuple(words[k:k + n]) for words in (a.split() for a in answers) for k in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def text_metrics(answers, finished):
    """Length, truncation and diversity metrics of a set of sampled answers."""
    return {
        "length_chars": float(np.mean([len(a) for a in answers])),
        "length_words": float(np.mean([len(a.split()) for a in answers])),
        "truncated_frac": float(np.mean(~np.asarray(finished))),
        "distinct_1": distinct_n(answers, 1),
        "distinct_2": distinct_n(answers, 2),
        "unique_frac": len(set(answers)) / len(answers),
    }


def sample_metrics(answers, finished):
    """Everything measured on a set of sampled answers besides the training reward: length, truncation,
    diversity, readability, the gold judge's figures (judge.py) and the mean of every named reward."""
    return {**text_metrics(answers, finished), **readability_metrics(answers), **judge_metrics(answers),
            **{f"{name}_reward_mean": float(np.mean(score(fn, answers)[0])) for name, fn in REWARDS.items()}}


def sample_records(prompts, answers, finished, rewards, components):
    """One rl/samples.jsonl record per answer: what was asked, what was said, and how it scored."""
    return [{"prompt": prompt, "answer": answer, "reward": None if reward is None else float(reward),
             "components": {name: values[i] for name, values in components.items()}, "finished": bool(done),
             **answer_readability(answer), "pair_share": pair_share(answer), "gold_score": gold_score(answer)}
            for i, (prompt, answer, done, reward) in enumerate(zip(prompts, answers, finished, rewards))]


def policy_samples(run, instruction, reward_fn, n, rng):
    """n answers to one instruction at the run's sampling settings: (metrics, one record per answer).
    metrics: reward_mean and reward/<component> by the run's reward, and sample_metrics."""
    answers, finished = zip(*sample_answers(run, instruction, n, rng))
    if reward_fn is None:  # the run's reward does not exist yet (a learnt one, before its stage)
        return sample_metrics(answers, finished), sample_records([instruction] * n, answers, finished, [None] * n, {})
    totals, components = score(reward_fn, answers, [instruction] * n)
    metrics = {**mean_rewards(totals, components), **sample_metrics(answers, finished)}
    return metrics, sample_records([instruction] * n, answers, finished, totals, components)


def degenerate_answer(n_words=8):
    """The string that maximises the original reward without saying anything."""
    return " " + " ".join(["coffee"] * n_words) + "!"


def answer_log_prob(run, prompt, answer):
    """Mean log-probability per character of answer + its closing newline after prompt, under the
    model's own distribution (temperature 1), each character with the context the sampler would see."""
    prompt_ids, answer_ids = run.tokenizer.encode(prompt), run.tokenizer.encode(answer + "\n")
    total, count = 0.0, 0
    for ids, targets, _ in policy_windows([prompt_ids], answer_ids[None], np.array([len(answer_ids)]),
                                          run.config.context_length):
        log_probs = log_softmax_array(run.predict(ids, targets.shape[1]).astype(np.float64))
        counted = targets != IGNORE
        total += float(log_probs[counted, targets[counted]].sum())
        count += int(counted.sum())
    return total / count


def stage_metrics(run, stage, tokens, settings, held_out_pairs, rl_prompts, reward_fn):
    """The same metrics after every stage, so the report can compare them; also the records of the
    FINAL_SAMPLES answers to the RL prompt that the reward and readability metrics come from."""
    rng = stream(settings.seed, "stage_metrics")
    metrics = language_model_metrics(run, tokens["validation"], settings.eval_windows, settings.batch_size, "val")
    if stage == "pretrain":
        metrics.update(language_model_metrics(run, tokens["test"], settings.eval_windows, settings.batch_size, "test"))
    metrics.update(answer_metrics(run, held_out_pairs, settings.batch_size, rng))
    final, records = policy_samples(run, rl_prompts[0], reward_fn, FINAL_SAMPLES, rng)
    metrics.update(final)
    metrics.update(reward_metrics(run, [i for i, _ in held_out_pairs], reward_fn, 4, rng, prefix="heldout_reward"))
    metrics["degenerate_logprob"] = answer_log_prob(run, format_prompt(rl_prompts[0]), degenerate_answer())
    return metrics, records


def report_samples(run, seed, prompts, reward_fn):
    """Two samples at the training temperature and one greedy for each prompt, with fixed seeds, and
    the reward of each answer to an instruction."""
    samples = []
    for index, prompt in enumerate(prompts):
        rng = stream(seed, "report_samples", index)
        sampled = [text for text, _ in sample_answers(run, prompt, 2, rng, raw_prompt=True)]
        greedy = sample_answers(run, prompt, 1, rng, temperature=0, raw_prompt=True)[0][0]
        instruction = prompt[len("Instruction: "):-len("\nAnswer:")] if prompt.startswith("Instruction:") else None
        scored = instruction is not None and reward_fn is not None
        rewards = score(reward_fn, sampled + [greedy], [instruction] * 3)[0] if scored else None
        samples.append({"prompt": prompt, "sampled": sampled, "greedy": greedy, "rewards": rewards})
    return samples
