"""The RL stage's step (rl.reinforce's make_loss) on both backends, against an independent computation.

The independent side is written from the rl.py docstring, not from its code: one torch forward per
sampled token on exactly the context the sampler saw (the last context_length tokens), the sampler's
distribution (softmax of logits / temperature over the top-k), the exact KL to the frozen model and
the entropy at temperature 1, rewards shaped and advantages taken per prompt group by their
definitions, and torch autograd for the gradient. Both backends' accumulated gradients, their logged
loss, KL, entropy and reward, and the moving-average baseline after every step, must match it.
"""
import numpy as np
import pytest
import torch

import minigpt_np
import minigpt_torch
from minigpt_np.train import rl
from minigpt_np.train.backend import NumpyBackend
from minigpt_np.train.data import format_prompt
from minigpt_np.train.runner import STAGES, Run, SamplingSettings, StageSettings
from minigpt_np.train.tokenizer import CharTokenizer
from minigpt_torch.backend import TorchBackend
from parity_tests.helpers import check

INSTRUCTIONS = ["ab", "abcde ab", "e d"]  # prompts of 23, 29 and 24 characters
TOKENIZER = CharTokenizer.from_texts(["Instruction: \nAnswer:", "abcde !", *INSTRUCTIONS])
CONFIG = minigpt_np.GPTConfig(vocab_size=TOKENIZER.vocab_size, d_model=24, n_layers=2, n_heads=3,
                              context_length=28, dropout=0.0, dtype="float64")
SAMPLING = SamplingSettings(temperature=0.8, top_k=6, max_new_tokens=9)


def reward(answer):
    """Varied rewards from a random model's answers: 0.3 per "e", 1.0 for a short answer."""
    return {"e": 0.3 * answer.count("e"), "short": 1.0 if len(answer) < 5 else 0.0}


CASES = {
    "kl-in-reward, 2 prompts, group_mean": dict(advantage="group_mean", kl_coef=0.3, kl_mode="reward",
                                                 prompts_per_step=2, samples_per_prompt=3),
    "sequence_mean, stop penalty, rloo, kl+entropy loss": dict(
        advantage="rloo", aggregation="sequence_mean", missing_stop_penalty=0.5, kl_coef=0.1, entropy_coef=0.05,
        prompts_per_step=2, samples_per_prompt=3),
    "moving_average baseline, 3 steps": dict(advantage="moving_average", baseline_decay=0.6,
                                             samples_per_prompt=4, missing_stop_penalty=0.25),
    "none, 4 prompts of 3 (with replacement), pieces of 5": dict(advantage="none", prompts_per_step=4,
                                                                 samples_per_prompt=2, kl_coef=0.2,
                                                                 windows_per_pass=5),
    "group_zscore, kl in reward and loss terms": dict(advantage="group_zscore", kl_coef=0.2, kl_mode="reward",
                                                      entropy_coef=0.1, prompts_per_step=2, samples_per_prompt=3),
    "rloo, duplicates split, 12 samples": dict(advantage="rloo", split_duplicates=True, samples_per_prompt=12,
                                               missing_stop_penalty=0.5),
}
STEPS = {"moving_average baseline, 3 steps": 3}
# a colder sampler for the duplicates case, so that a random model gives some answers twice
CASE_SAMPLING = {"rloo, duplicates split, 12 samples": SamplingSettings(temperature=0.2, top_k=2, max_new_tokens=9)}


def run_the_stage(backend, settings, steps, monkeypatch, tmp_path, sampling=SAMPLING):
    """rl.reinforce with its train_loop replaced by one that calls make_loss for steps 1..steps with
    the stage's per-step generator and records, per step: the rollouts, the figures, every gradient,
    and the baseline state after the step. No update is applied, so every step's gradient is at the
    same weights."""
    model = backend.create_model(CONFIG, seed=0)
    reference_weights = NumpyBackend().state_dict(minigpt_np.TinyGPT(CONFIG, seed=1))
    run = Run(backend, model, CONFIG, TOKENIZER, tmp_path, metrics=None, seed=7, sampling=sampling,
              progress=False, notify=lambda message: None)
    records, rollouts = [], []
    real_generate = rl.generate

    def recording_generate(*args, **kwargs):
        result = real_generate(*args, **kwargs)
        rollouts.append(result)
        return result

    def one_step_at_a_time(run, stage, stage_settings, make_loss, evaluate, loss_name, state):
        for step in range(1, steps + 1):
            _, figures = make_loss(np.random.default_rng([run.seed, STAGES.index("rl"), step]))
            grads = {name: np.array(p.grad.detach().numpy() if isinstance(p.grad, torch.Tensor) else p.grad)
                     for name, p in model.named_parameters()}
            for p in model.parameters():
                p.grad = None
            records.append((rollouts[-1], figures, grads, dict(state)))
        return {}, 0.0

    monkeypatch.setattr(rl, "generate", recording_generate)
    monkeypatch.setattr(rl, "train_loop", one_step_at_a_time)
    stage_settings = StageSettings(steps=steps, lr=1e-3, batch_size=1, eval_every=steps, checkpoint_every=0,
                                   weight_decay=0.01, max_grad_norm=1.0, log_every=10)
    rl.reinforce(run, stage_settings, rl.RLSettings.plain(**settings), INSTRUCTIONS, reward, [], reference_weights)
    return records


def independent_step(rollout, prompts, rl_settings, baseline, sampling=SAMPLING):
    """The step's loss and gradients from the docstring's definitions, one torch forward per token."""
    policy = minigpt_torch.TinyGPT(CONFIG)
    minigpt_torch.load_numpy_state_dict(policy, minigpt_np.TinyGPT(CONFIG, seed=0).state_dict(), strict=True)
    frozen = minigpt_torch.TinyGPT(CONFIG)
    minigpt_torch.load_numpy_state_dict(frozen, minigpt_np.TinyGPT(CONFIG, seed=1).state_dict(), strict=True)
    policy.eval()
    frozen.eval()
    generated, lengths, finished = rollout
    G = rl_settings.samples_per_prompt
    N, T = len(generated), CONFIG.context_length
    log_probs, kls, entropies, rewards, answers = [], [], [], [], []
    for prompt, row, length, done in zip(prompts, generated, lengths, finished):
        sequence = np.concatenate([prompt, row[:length]])
        sample_log_probs, sample_kls, sample_entropies = [], [], []
        for j in range(len(prompt), len(sequence)):
            context = torch.as_tensor(sequence[max(0, j - T):j][None])
            logits = policy(context)[0, -1]
            with torch.no_grad():
                frozen_logits = frozen(context)[0, -1]
            scaled = logits / sampling.temperature
            kth = torch.sort(scaled.detach(), descending=True).values[sampling.top_k - 1]
            scaled = torch.where(scaled.detach() < kth, torch.tensor(-torch.inf, dtype=scaled.dtype), scaled)
            sample_log_probs.append(torch.log_softmax(scaled, -1)[sequence[j]])
            p, log_p, log_q = torch.softmax(logits, -1), torch.log_softmax(logits, -1), torch.log_softmax(frozen_logits, -1)
            sample_kls.append((p * (log_p - log_q)).sum())
            sample_entropies.append(-(p * log_p).sum())
        log_probs.append(torch.stack(sample_log_probs))
        kls.append(torch.stack(sample_kls))
        entropies.append(torch.stack(sample_entropies))
        answers.append(TOKENIZER.decode(row[:length - int(done)]))
        rewards.append(sum(reward(answers[-1]).values()))
    rewards = np.array(rewards)
    shaped = rewards.copy()
    if rl_settings.split_duplicates:  # each answer's reward over its number of copies in its group
        for i in range(N):
            group = answers[i // G * G:(i // G + 1) * G]
            shaped[i] = rewards[i] / group.count(answers[i])
    shaped = shaped - rl_settings.missing_stop_penalty * (~finished)
    if rl_settings.kl_mode == "reward":
        shaped = shaped - rl_settings.kl_coef * np.array([float(k.detach().sum()) for k in kls])
    advantage = np.zeros(N)
    for start in range(0, N, G):
        group = shaped[start:start + G]
        for i in range(G):
            others = np.delete(group, i)
            advantage[start + i] = {
                "none": group[i],
                "moving_average": group[i] - baseline,
                "group_mean": group[i] - group.mean(),
                "rloo": group[i] - others.mean(),
                "group_zscore": (group[i] - group.mean()) / (np.sqrt(((group - group.mean()) ** 2).mean()) + 1e-6),
            }[rl_settings.advantage]
    n_tokens = int(lengths.sum())
    aggregate = (lambda lp: lp.mean()) if rl_settings.aggregation == "sequence_mean" else (lambda lp: lp.sum())
    loss = -sum(float(a) * aggregate(lp) for a, lp in zip(advantage, log_probs)) / N
    if rl_settings.kl_mode == "loss":
        loss = loss + rl_settings.kl_coef * torch.cat(kls).sum() / n_tokens
    loss = loss - rl_settings.entropy_coef * torch.cat(entropies).sum() / n_tokens
    loss.backward()
    return {
        "loss": loss.detach(), "grads": {name: p.grad for name, p in policy.named_parameters()},
        "kl": float(torch.cat(kls).detach().mean()), "entropy": float(torch.cat(entropies).detach().mean()),
        "kl_per_answer": float(np.mean([float(k.detach().sum()) for k in kls])),
        "reward_mean": float(rewards.mean()), "shaped_mean": float(shaped.mean()),
        "duplicated": len(set(answers)) < N,
    }


@pytest.mark.parametrize("case", CASES)
def test_reinforce_step_on_both_backends_equals_an_independent_computation(case, monkeypatch, tmp_path):
    settings = CASES[case]
    steps = STEPS.get(case, 1)
    rl_settings = rl.RLSettings.plain(**settings)
    prompt_ids = [TOKENIZER.encode(format_prompt(p)) for p in INSTRUCTIONS]
    results = {}
    for backend in (NumpyBackend(), TorchBackend()):
        results[backend.name] = run_the_stage(backend, settings, steps, monkeypatch, tmp_path / backend.name,
                                              CASE_SAMPLING.get(case, SAMPLING))
    baseline = 0.0
    finished_seen, crop_used = set(), False
    for step, (numpy_record, torch_record) in enumerate(zip(results["numpy"], results["torch"]), start=1):
        (rollout, figures, grads, state), (torch_rollout, torch_figures, torch_grads, torch_state) = \
            numpy_record, torch_record
        for a, b in zip(rollout, torch_rollout):
            assert np.array_equal(a, b)  # float64: the same tokens on both backends
        # The prompts the stage chose: its generator's first draw, as the docstring describes.
        rng = np.random.default_rng([7, STAGES.index("rl"), step])
        chosen = rng.choice(len(INSTRUCTIONS), size=rl_settings.prompts_per_step,
                            replace=len(INSTRUCTIONS) < rl_settings.prompts_per_step)
        prompts = [prompt_ids[c] for c in chosen for _ in range(rl_settings.samples_per_prompt)]
        expected = independent_step(rollout, prompts, rl_settings, baseline, CASE_SAMPLING.get(case, SAMPLING))
        what = f"REINFORCE step {step}, {case}"
        for name, record_figures, record_grads in (("numpy", figures, grads), ("torch", torch_figures, torch_grads)):
            check({"policy_loss": np.float64(record_figures["policy_loss"])}, {"policy_loss": expected["loss"]},
                  "float64", "value", f"{what} ({name})", scope="model")
            check(record_grads, expected["grads"], "float64", "grad", f"{what} ({name})", scope="model")
            for figure in ("kl", "entropy", "reward_mean", "kl_per_answer"):
                assert abs(record_figures[figure] - expected[figure]) <= 1e-10, (name, figure)
        if rl_settings.advantage == "moving_average":
            # b starts at the first step's mean shaped reward, then b <- decay * b + (1 - decay) * mean
            baseline = expected["shaped_mean"] if step == 1 else (
                rl_settings.baseline_decay * baseline + (1 - rl_settings.baseline_decay) * expected["shaped_mean"])
            assert abs(state["baseline"] - baseline) <= 1e-12 and abs(torch_state["baseline"] - baseline) <= 1e-12
            assert state["baseline_steps"] == torch_state["baseline_steps"] == step
        finished_seen.update(bool(f) for f in rollout[2])
        if rl_settings.split_duplicates:
            assert expected["duplicated"]  # some answers were given more than once, so their rewards were split
        if rl_settings.prompts_per_step > 1:
            assert len(set(chosen.tolist())) > 1  # several prompts, so the groups are really separate
        crop_used |= max(len(p) + n for p, n in zip(prompts, rollout[1])) > CONFIG.context_length + 1
    assert finished_seen == {True, False}  # finished and cut-off answers both occur
    assert crop_used  # some tokens were sampled from a cropped context
