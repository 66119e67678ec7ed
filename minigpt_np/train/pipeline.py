"""The whole pipeline: data, vocabulary, model, the three stages one after the other, checkpoints and the report.

``run_pipeline`` runs it all from a run's settings (``settings.py``); ``rl_from_checkpoint`` runs the RL
stage alone from a saved SFT checkpoint (``examples/compare_rl.py``).
"""
import dataclasses
import platform
import time
from collections import Counter
from pathlib import Path

import numpy as np

from ..config import GPTConfig
from .checkpoint import load_checkpoint
from .data import (check_corpus, format_example, format_prompt, load_corpus, load_sft_pairs, split_pairs)
from .evaluation import (FINAL_SAMPLES, degenerate_answer, mean_rewards, policy_samples, report_samples,
                         reward_metrics, stage_metrics)
from .inspection import report_inspection
from .metrics import MetricsLog
from .report import write_plots, write_report
from .preferences import corpus_words, preference_pairs
from .reward_model import learned_reward, reward_modeling, sft_sample_preferences
from .rewards import score
from .rl import keep_final_samples, reinforce
from .runner import STAGES, Run, SamplingSettings, StageSettings, stream
from .settings import LEARNED_REWARDS, _prepare_folder, backend_for, load_reward, rl_settings
from .stages import pretrain, sft
from .tokenizer import CharTokenizer

# The RL instruction of the original, exactly: with "Instruction: " and "\nAnswer:" around it, the prompt is
# 72 characters, longer than the original context of 64. The SFT pairs hold it too, as the original's did.
RL_INSTRUCTION = "Give a creative tagline for coffee before practice."
# A raw prompt sampled after every stage (with the RL prompt and two held-out instructions).
TEXT_PROMPT = "The coach"


def build_tokenizer(corpus, pairs, extra_texts=()):
    """One character vocabulary for every stage: the corpus, the SFT examples, the RL prompt,
    the degenerate answer of the report and any extra texts."""
    return CharTokenizer.from_texts(
        [corpus.train, corpus.validation, corpus.test, *extra_texts, degenerate_answer(), format_prompt(RL_INSTRUCTION)]
        + [format_example(i, a) for i, a in pairs])


def check_world_size(settings, backend):
    """Under torchrun every global batch is split evenly over the ranks."""
    W = backend.world_size
    if settings.batch_size % W:
        raise ValueError(f"--batch-size: {settings.batch_size} sequences do not split evenly over {W} ranks")
    if (settings.rl_samples * settings.rl_prompts_per_step) % W:
        raise ValueError(f"--rl-samples: {settings.rl_samples} x {settings.rl_prompts_per_step} prompts per step "
                         f"= {settings.rl_samples * settings.rl_prompts_per_step} samples do not split evenly "
                         f"over {W} ranks")


@dataclasses.dataclass
class PipelineData:
    """What the stages train and are measured on, read and encoded once."""
    corpus: object  # data.Corpus: the three splits' text, their sources, notices
    tokens: dict  # split -> (n,) token ids of the corpus
    train_pairs: list  # SFT (instruction, answer) pairs trained on
    held_out_pairs: list  # and held out (answer loss, format rate, held-out rewards)
    report_prompts: list  # prompts sampled after every stage for the report
    tokenizer: CharTokenizer
    config: GPTConfig


def load_data(settings, notify):
    """The corpus, the SFT pairs, one vocabulary for every stage, and the model's shape."""
    corpus = load_corpus(settings.data, settings.data_dir or None, settings.train_file or None,
                         settings.validation_file or None, settings.test_file or None)
    for notice in corpus.notices:
        notify(f"notice: {notice}")
    pairs = load_sft_pairs(settings.sft_file or None)
    train_pairs, held_out_pairs = split_pairs(pairs)
    rl_settings(settings)  # a bad RL setting is reported now, not after pretraining
    held_out_prompts = [instruction for instruction, _ in held_out_pairs]
    report_prompts = [TEXT_PROMPT] + [format_prompt(i) for i in [RL_INSTRUCTION] + held_out_prompts[:2]]
    tokenizer = build_tokenizer(corpus, pairs, report_prompts)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, d_model=settings.d_model, n_layers=settings.n_layers,
                       n_heads=settings.n_heads, context_length=settings.context_length,
                       dropout=settings.dropout, dtype=settings.dtype)
    check_corpus(corpus, config.context_length)
    tokens = {split: tokenizer.encode(getattr(corpus, split)) for split in ("train", "validation", "test")}
    return PipelineData(corpus, tokens, train_pairs, held_out_pairs, report_prompts, tokenizer, config)


def run_pipeline(settings, notify=print):
    """Pretraining, SFT, the reward model (with settings.rm_steps) and RL one after the other; returns (the
    summary of each stage, the run folder).
    With settings.resume, a stage already complete in the folder is loaded instead of trained."""
    backend = backend_for(settings)
    check_world_size(settings, backend)
    reward_fn = load_reward(settings.reward)
    data = load_data(settings, notify)
    run = _new_run(settings, backend, data.config, data.tokenizer, notify)
    if settings.kernels == "lab" and settings.backend == "numpy":  # the learner's ops beside the plain ones first
        from ..lab.model import check_lab_model
        check_lab_model(settings, data, notify)
    held_out_prompts = [instruction for instruction, _ in data.held_out_pairs]
    stage_calls = {
        "pretrain": lambda s: pretrain(run, s, data.tokens["train"], data.tokens["validation"], settings.eval_windows),
        "sft": lambda s: sft(run, s, data.train_pairs, data.held_out_pairs, settings.sft_answer_chars or None),
        "rl": lambda s: reinforce(run, s, rl_settings(settings), [RL_INSTRUCTION], reward_fn, held_out_prompts,
                                  reference_weights=backend.state_dict(run.model)),
    }
    context = _report_context(settings, data, backend)
    summaries = {}
    for stage in STAGES:
        if stage == "rm":
            if settings.rm_steps:
                summaries["rm"], reward_run = reward_model_stage(run, settings, data)
                if settings.reward in LEARNED_REWARDS:  # RL's reward from now on; the stages before it scored now
                    reward_fn = learned_reward(settings.reward, reward_run, data.train_pairs)
                    score_earlier_stages(summaries, reward_fn)
                _write_report_files(run, context, summaries)
            continue
        checkpoint = run.stage_checkpoint(stage) if settings.resume else None
        if checkpoint is not None and checkpoint.complete:
            backend.load_state_dict(run.model, checkpoint.weights)
            summaries[stage] = checkpoint.meta
            notify(f"{stage}: already complete in {run.stage_folder(stage)}, skipped")
            continue
        _, wall_time = stage_calls[stage](_stage_settings(settings, stage))
        summaries[stage] = _finish_stage(run, stage, settings, wall_time, data, reward_fn)
        if run.writes and stage == "rl":
            context["inspection"] = report_inspection(run.folder, summaries, RL_INSTRUCTION, data.held_out_pairs[0])
        _write_report_files(run, context, summaries)
    return summaries, run.folder


def _write_report_files(run, context, summaries):
    if run.writes:
        write_plots(run.folder, run.metrics)
        write_report(run.folder, context, summaries, run.metrics)


def _report_context(settings, data, backend):
    """What the report says about the run besides its metrics."""
    return {
        "settings": dataclasses.asdict(settings), "config": data.config.to_dict(), "corpus": data.corpus.name,
        "sources": data.corpus.sources, "notices": data.corpus.notices, "vocab_size": data.tokenizer.vocab_size,
        "characters": {split: len(t) for split, t in data.tokens.items()},
        "sft_pairs": {"train": len(data.train_pairs), "held_out": len(data.held_out_pairs),
                      "file": settings.sft_file or "built-in"},
        "rl_prompt": format_prompt(RL_INSTRUCTION), "backend": backend.name, "device": backend.device,
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def reward_model_stage(run, settings, data):
    """Stage rm, between SFT and RL: the reward model, learnt from preference pairs (reward_model.py).
    Returns (its summary, its Run); a complete rm checkpoint in the folder is loaded when resuming."""
    reward_run = _reward_model_run(run)
    checkpoint = run.stage_checkpoint("rm") if settings.resume else None
    if checkpoint is not None and checkpoint.complete:
        run.backend.load_state_dict(reward_run.model, checkpoint.weights)
        run.notify(f"rm: already complete in {run.stage_folder('rm')}, skipped")
        return checkpoint.meta, reward_run
    train, held_out = preference_data(run, data, settings)
    metrics, wall_time = reward_modeling(reward_run, _stage_settings(settings, "rm"), train, held_out)
    reward_run.metrics.log("rm", settings.rm_steps, summary=True, **metrics)
    counts = {name: dict(Counter(p.kind for p in made)) for name, made in (("train", train), ("held_out", held_out))}
    reward_run.save("rm", settings.rm_steps, True, metrics=metrics,
                    extra={"wall_time": wall_time, "model": "reward", "preference_pairs": counts})
    return run.stage_checkpoint("rm").meta, reward_run


def score_earlier_stages(summaries, reward_fn):
    """A reward learnt after SFT scores the answers of the stages before it to the RL prompt, kept with their
    summaries (the same answers their other figures come from), so that the stage table compares them."""
    for stage in ("pretrain", "sft"):
        answers = [record["answer"] for record in summaries.get(stage, {}).get("final_samples") or []]
        if answers:
            scored = score(reward_fn, answers, [RL_INSTRUCTION] * len(answers))
            summaries[stage]["metrics"].update(mean_rewards(*scored))


def _reward_model_run(run):
    """The reward model's Run: the SFT policy's body (its weights now) with a head that starts at 0, in the
    same folder, metrics log and seed."""
    backend = run.backend
    model = backend.create_reward_model(run.config, run.seed)
    body = {name: value for name, value in backend.state_dict(run.model).items() if name != "lm_head.weight"}
    backend.load_state_dict(model, {**backend.state_dict(model), **body})
    return Run(backend, model, run.config, run.tokenizer, run.folder, run.metrics, run.seed, run.sampling,
               run.resume, run.progress, run.notify)


def preference_data(run, data, settings):
    """The reward model's preference pairs, for training and held out: each written answer against its
    rejected answers of every kind (preferences.py), the SFT policy's own (run.model) among them."""
    rng = stream(settings.seed, "preferences")
    words = corpus_words(data.corpus.train)
    run.backend.set_training(run.model, False)
    made = []
    for pairs in (data.train_pairs, data.held_out_pairs):
        made.append(preference_pairs(pairs, words, rng)
                    + (sft_sample_preferences(run, pairs, settings.rm_sft_samples, rng) if settings.rm_sft_samples
                       else []))
    return made


def _finish_stage(run, stage, settings, wall_time, data, reward_fn):
    """After a stage: the same metrics for every stage (logged as its summary), the final policy's answers
    (RL), the report's samples, and the complete checkpoint. Returns the checkpoint's record."""
    run.backend.set_training(run.model, False)
    metrics, final_samples = stage_metrics(run, stage, data.tokens, settings, data.held_out_pairs, [RL_INSTRUCTION],
                                           reward_fn)
    flat_groups = run.metrics.series(stage, "zero_std_frac")[1]  # RL: groups whose answers all scored alike
    if flat_groups:
        metrics["flat_group_share"] = float(np.mean(flat_groups))
    steps = getattr(settings, f"{stage}_steps")
    _log_summary(run, stage, steps, metrics, final_samples)
    samples = report_samples(run, settings.seed, data.report_prompts, reward_fn)
    run.save(stage, steps, True, metrics=metrics,
             extra={"wall_time": wall_time, "samples": samples, "final_samples": final_samples,
                    "train_loss": run.metrics.last(stage, "train_loss")})
    return run.stage_checkpoint(stage).meta


def _log_summary(run, stage, steps, metrics, final_samples):
    """A stage's closing metrics into metrics.jsonl as its summary; after RL, the final policy's answers
    into rl/samples.jsonl."""
    run.metrics.log(stage, steps, summary=True, **metrics)
    if stage == "rl":
        keep_final_samples(run, steps, final_samples)


def _new_run(settings, backend, config, tokenizer, notify):
    folder = Path(settings.runs_dir) / (settings.name or f"{settings.preset}-{settings.backend}")
    writes = backend.rank == 0  # under torchrun, rank 0 alone writes
    if writes:
        _prepare_folder(folder, settings)
    backend.all_sum(0)  # the other ranks wait for the folder (if rank 0 refuses it, rank 0's exit stops them)
    sampling = SamplingSettings(temperature=settings.temperature, top_k=settings.top_k,
                                max_new_tokens=settings.max_new_tokens)
    return Run(backend, backend.create_model(config, settings.seed), config, tokenizer, folder,
               MetricsLog(folder / "metrics.jsonl", notify, writes=writes), settings.seed, sampling, settings.resume,
               settings.progress, notify)


def _stage_settings(settings, stage):
    return StageSettings(steps=getattr(settings, f"{stage}_steps"), lr=getattr(settings, f"{stage}_lr"),
                         batch_size=settings.batch_size, eval_every=getattr(settings, f"{stage}_eval_every"),
                         checkpoint_every=settings.checkpoint_every, weight_decay=settings.weight_decay,
                         max_grad_norm=settings.grad_clip, log_every=1 if stage == "rl" else 10)


def rl_from_checkpoint(checkpoint_folder, settings, notify=print, evaluate_before=False, reward_model=None):
    """The RL stage alone, starting from a saved (SFT) checkpoint, in the run folder of settings.

    The model's shape and vocabulary come from the checkpoint; RL, sampling and seed settings from
    settings. evaluate_before: also log the held-out reward before RL, as step 0. reward_model: the folder
    of a trained reward model (a run's rm stage, from this SFT checkpoint), for settings.reward learned or
    combined. Returns (run, wall time in seconds, the final policy's metrics on FINAL_SAMPLES answers); every
    number is in run.metrics, the answers of the last steps and the final ones in rl/samples.jsonl.
    """
    checkpoint = load_checkpoint(checkpoint_folder)
    backend = backend_for(settings)
    pairs = load_sft_pairs(settings.sft_file or None)
    held_out_prompts = [instruction for instruction, _ in split_pairs(pairs)[1]]
    run = _new_run(settings, backend, checkpoint.config, checkpoint.tokenizer, notify)
    backend.load_state_dict(run.model, checkpoint.weights)
    backend.set_training(run.model, False)
    reward_fn = load_reward(settings.reward)
    if reward_fn is None:
        reward_fn = reward_from_checkpoint(settings.reward, reward_model, run, split_pairs(pairs)[0])
    if evaluate_before:  # the held-out reward before RL, as step 0 (drawn as the stage's evaluations draw)
        run.metrics.log("rl", 0, **reward_metrics(run, held_out_prompts, reward_fn, 4,
                                                  stream(run.seed, "rl/evaluation"), prefix="heldout_reward"))
    _, wall_time = reinforce(run, _stage_settings(settings, "rl"), rl_settings(settings), [RL_INSTRUCTION],
                             reward_fn, held_out_prompts, checkpoint.weights)
    backend.set_training(run.model, False)
    final, records = policy_samples(run, RL_INSTRUCTION, reward_fn, FINAL_SAMPLES,
                                    stream(settings.seed, "stage_metrics"))
    _log_summary(run, "rl", settings.rl_steps, final, records)
    return run, wall_time, final


def reward_from_checkpoint(kind, reward_model, run, written_pairs):
    """The learned or combined reward (kind) from a saved reward model (its rm stage folder), which must read
    the policy's vocabulary and context."""
    if reward_model is None:
        raise ValueError(f"--reward {kind}: RL from a checkpoint needs a trained reward model: a run's rm stage "
                         f"(examples/run_all.py --rm-steps N)")
    checkpoint = load_checkpoint(reward_model, expect_config=run.config, expect_tokenizer=run.tokenizer)
    if checkpoint.meta.get("model") != "reward":
        raise ValueError(f"--reward-model: {reward_model} holds a policy, not a reward model (a run's rm folder)")
    model = run.backend.create_reward_model(checkpoint.config, run.seed)
    run.backend.load_state_dict(model, checkpoint.weights)
    reward_run = Run(run.backend, model, run.config, run.tokenizer, run.folder, run.metrics, run.seed, run.sampling,
                     progress=False, notify=run.notify)
    return learned_reward(kind, reward_run, written_pairs)


__all__ = ["run_pipeline", "rl_from_checkpoint"]
