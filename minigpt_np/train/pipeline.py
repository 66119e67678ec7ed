"""The whole pipeline: data, vocabulary, model, the three stages, checkpoints and the report.

``PipelineSettings`` lists every setting (each one is also a flag of examples/run_all.py, with the
help text given here); ``PRESETS`` holds the named starting points; ``run_pipeline`` runs it all.
"""
import dataclasses
import importlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import GPTConfig
from .backend import check_backend_options, get_backend
from .checkpoint import CheckpointError, load_checkpoint, write_durably
from .validation import PROBABILITY, SEED, coefficient, count, flag, positive
from .data import (check_corpus, format_example, format_prompt, load_corpus, load_sft_pairs, split_pairs)
from .metrics import MetricsLog
from .report import write_plots, write_report
from .rewards import REWARDS
from .evaluation import (FINAL_SAMPLES, degenerate_answer, policy_samples, report_samples, reward_metrics,
                         stage_metrics)
from .rl import ADVANTAGES, RLSettings, keep_final_samples, reinforce
from .runner import STAGES, Run, SamplingSettings, StageSettings, stream
from .stages import pretrain, sft
from .tokenizer import CharTokenizer

# The RL instruction of the original, exactly: with "Instruction: " and "\nAnswer:" around it, the prompt is
# 72 characters, longer than the original context of 64. The SFT pairs hold it too, as the original's did.
RL_INSTRUCTION = "Give a creative tagline for coffee before practice."
# A raw prompt sampled after every stage (with the RL prompt and two held-out instructions).
TEXT_PROMPT = "The coach"


def _setting(default, help, choices=None, valid=None):
    """A setting: its default, its --help text, and its allowed choices or numeric range (validation.Range)."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": valid})


@dataclass
class PipelineSettings:
    backend: str = _setting("torch", "tensor library: torch or numpy", ("torch", "numpy"))
    device: str = _setting("cpu", "torch device: cpu or cuda (numpy runs on the CPU only)")
    kernels: str = _setting("fast", "numpy backend: the form of the model's ops, fast (for training) or plain "
                            "(functional.py, the reading text); a checkpoint of either loads with the other",
                            ("fast", "plain"))
    compile: bool = _setting(False, "torch backend: run the training steps through torch.compile (needs a C++ "
                             "compiler on the CPU; the first steps wait for the compilation)")
    preset: str = _setting("seed", "starting values for every setting: seed (the original) or quick (a demo)",
                           ("seed", "quick"))
    name: str = _setting("", "run folder name under --runs-dir (default: <preset>-<backend>)")
    runs_dir: str = _setting("runs", "folder that holds the run folders")
    resume: bool = _setting(False, "continue the run folder's stopped run where it stopped")
    seed: int = _setting(0, "seed of the initial weights, batches, dropout and samples", valid=SEED)
    progress: bool = _setting(True, "show progress bars")
    # data
    data: str = _setting("wikitext", "pretraining corpus: wikitext (the hub, or --data-dir files; the embedded "
                         "corpus when neither can be had) or embedded", ("wikitext", "embedded"))
    data_dir: str = _setting("", "folder with WikiText split files (wiki.*.raw or train/valid/test.txt)")
    train_file: str = _setting("", "explicit training text file (instead of --data-dir)")
    validation_file: str = _setting("", "explicit validation text file")
    test_file: str = _setting("", "explicit test text file")
    sft_file: str = _setting("", "JSONL of {\"instruction\": ..., \"answer\": ...} pairs (default: built-in pairs)")
    # model
    d_model: int = _setting(128, "model width", valid=count(1, 4096))
    n_layers: int = _setting(2, "transformer layers", valid=count(1, 64))
    n_heads: int = _setting(4, "attention heads", valid=count(1, 256))
    context_length: int = _setting(64, "characters the model sees at once", valid=count(1, 4096))
    dropout: float = _setting(0.1, "dropout probability in training", valid=PROBABILITY)
    dtype: str = _setting("float32", "float32 or float64", ("float32", "float64"))
    # training
    batch_size: int = _setting(32, "sequences per pretraining/SFT step", valid=count(1, 65536))
    weight_decay: float = _setting(0.01, "AdamW weight decay", valid=coefficient(10.0))
    grad_clip: float = _setting(1.0, "global gradient-norm clipping threshold", valid=positive(1e6))
    pretrain_steps: int = _setting(2000, "pretraining steps", valid=count())
    pretrain_lr: float = _setting(3e-4, "pretraining learning rate", valid=positive(10.0))
    pretrain_eval_every: int = _setting(200, "pretraining steps between validations", valid=count())
    sft_steps: int = _setting(200, "SFT steps", valid=count())
    sft_lr: float = _setting(3e-4, "SFT learning rate", valid=positive(10.0))
    sft_eval_every: int = _setting(50, "SFT steps between validations", valid=count())
    sft_answer_chars: int = _setting(8, "SFT: answer characters trained per example and step, each in the window "
                                     "that sampling shows the model when it writes it (0: all of them)",
                                     valid=count(0))
    rl_steps: int = _setting(250, "RL steps", valid=count())
    rl_lr: float = _setting(2e-4, "RL learning rate", valid=positive(10.0))
    rl_eval_every: int = _setting(25, "RL steps between held-out reward checks", valid=count())
    eval_windows: int = _setting(128, "validation/test windows of context_length characters", valid=count(1, 10**6))
    checkpoint_every: int = _setting(0, "steps between checkpoints within a stage (0: end of stage and Ctrl-C)", valid=count(0))
    # sampling and RL
    temperature: float = _setting(0.6, "sampling temperature (RL samples and report samples)", valid=positive(100.0))
    top_k: int = _setting(10, "sample from the k most likely characters", valid=count(1, 10**6))
    max_new_tokens: int = _setting(80, "longest sampled answer in characters", valid=count(1, 10**5))
    rl_samples: int = _setting(16, "samples per prompt per RL step (1 with --rl-advantage none: the original)", valid=count(1, 4096))
    rl_prompts_per_step: int = _setting(1, "prompts per RL step", valid=count(1, 1024))
    rl_advantage: str = _setting("rloo", "REINFORCE baseline: none (the original), moving_average, group_mean, "
                                 "rloo (leave-one-out) or group_zscore", ADVANTAGES)
    rl_baseline_decay: float = _setting(0.9, "moving_average: weight of the old baseline in each update", valid=PROBABILITY)
    rl_kl_coef: float = _setting(0.2, "beta: weight of the exact KL to the frozen SFT policy", valid=coefficient())
    rl_kl_mode: str = _setting("loss", "KL as a loss term (loss) or as a detached reward penalty (reward)",
                               ("loss", "reward"))
    rl_entropy_coef: float = _setting(0.2, "weight of the entropy bonus", valid=coefficient())
    rl_aggregation: str = _setting("sequence_sum", "log-probabilities of an answer: summed (sequence_sum, "
                                   "longer answers weigh more) or averaged (sequence_mean)",
                                   ("sequence_sum", "sequence_mean"))
    rl_missing_stop_penalty: float = _setting(1.0, "subtracted from the reward of an answer that runs to "
                                              "--max-new-tokens without its end (a training signal only: the "
                                              "logged reward is the reward function's)", valid=coefficient())
    rl_split_duplicates: bool = _setting(True, "an answer given k times among a prompt's samples trains on its "
                                         "reward / k (a training signal only: the logged reward is the reward "
                                         "function's), so that one answer said again and again stops paying")
    rl_windows_per_pass: int = _setting(128, "RL update: sampled windows per forward/backward piece (less: "
                                        "less memory, a little slower)", valid=count(1, 10**6))
    reward: str = _setting("guarded", "reward: original (coffee, \"!\", 8-20 words), guarded (the same, paid only "
                           "for answers that read as language), or module:function returning {component: value}")


PRESETS = {
    "seed": {},  # the defaults above: the original model, pretraining and SFT, and this project's RL method
    "quick": dict(data="embedded", d_model=64, context_length=128, batch_size=16, pretrain_steps=600,
                  pretrain_lr=4e-3, pretrain_eval_every=150, sft_steps=120, sft_lr=1e-3, sft_eval_every=40,
                  rl_steps=30, rl_lr=1e-4, rl_samples=8, rl_eval_every=15, max_new_tokens=56, eval_windows=48),
}


def settings_for(preset="seed", **overrides):
    """The preset's settings with explicit overrides on top."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    known = {f.name for f in dataclasses.fields(PipelineSettings)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(unknown)}")
    settings = PipelineSettings(**{**PRESETS[preset], **overrides, "preset": preset})
    validate(settings)
    return settings


FILE_SETTINGS = ("data_dir", "train_file", "validation_file", "test_file")


def validate(settings):
    """Refuse a bad setting, or a conflicting pair, before any data is read or any folder written:
    a ValueError "--flag: what is wrong and what is allowed"."""
    for spec in dataclasses.fields(PipelineSettings):
        value, choices, valid = getattr(settings, spec.name), spec.metadata["choices"], spec.metadata["range"]
        if choices and value not in choices:
            raise ValueError(f"{flag(spec.name)}: must be one of {', '.join(choices)}, got {value!r}")
        if valid is not None:
            valid.check(flag(spec.name), value)
    if settings.d_model % settings.n_heads:
        raise ValueError(f"--n-heads: must divide --d-model ({settings.d_model}) into equal heads, got {settings.n_heads}")
    if settings.data == "embedded":
        given = [flag(name) for name in FILE_SETTINGS if getattr(settings, name)]
        if given:
            raise ValueError(f"{given[0]}: given with --data embedded, which trains on the built-in corpus; "
                             f"drop it, or use --data wikitext")
    for name in FILE_SETTINGS[1:] + ("sft_file",):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise ValueError(f"{flag(name)}: {path} is not a file")
    if settings.data_dir and not Path(settings.data_dir).is_dir():
        raise ValueError(f"--data-dir: {settings.data_dir} is not a folder")
    if Path(settings.runs_dir).exists() and not Path(settings.runs_dir).is_dir():
        raise ValueError(f"--runs-dir: {settings.runs_dir} is a file, not a folder")
    check_backend_options(settings.backend, settings.kernels, settings.compile)
    if settings.rl_advantage in ("group_mean", "rloo", "group_zscore") and settings.rl_samples < 2:
        raise ValueError(f"--rl-samples: the {settings.rl_advantage} advantage compares the samples of a prompt, "
                         f"so it needs at least 2, got {settings.rl_samples}")
    load_reward(settings.reward)


def load_reward(spec):
    """"original", or "module:function" for a user's reward."""
    if spec in REWARDS:
        return REWARDS[spec]
    module_name, _, function_name = spec.partition(":")
    if not function_name:
        raise ValueError(f"--reward: unknown reward {spec!r}; use one of {', '.join(REWARDS)} or module:function")
    try:
        return getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"--reward: cannot load {spec!r}: {error}") from None


def rl_settings(settings):
    """The RL stage's settings, by name: RLSettings' field x is the pipeline's rl_x (samples_per_prompt:
    rl_samples). The defaults live in PipelineSettings alone."""
    return RLSettings(**{field.name: getattr(settings, "rl_samples" if field.name == "samples_per_prompt"
                                             else f"rl_{field.name}") for field in dataclasses.fields(RLSettings)})


def backend_for(settings):
    """The backend of the settings; the kernels are the numpy backend's choice (the others have one form)."""
    return get_backend(settings.backend, settings.device,
                       kernels=settings.kernels if settings.backend == "numpy" else None, compile=settings.compile)


class RunFolderError(ValueError):
    pass


# Settings that may change when a run is resumed (they do not change what is computed).
_RESUMABLE_CHANGES = {"resume", "progress", "device", "compile"}
# Settings whose default is not what a run saved before they were added did.
_BEFORE_ADDED = {"rl_split_duplicates": False, "sft_answer_chars": None}


def _prepare_folder(folder, settings):
    """Create the run folder, or check that resuming continues the same run."""
    settings_path = folder / "settings.json"
    current = dataclasses.asdict(settings)
    if settings.resume:
        if not settings_path.exists():
            raise RunFolderError(f"--resume: {folder} holds no run to resume")
        saved = json.loads(settings_path.read_text())
        # a setting added since the run was saved: what the run did before it existed
        defaults = {**dataclasses.asdict(PipelineSettings()), **_BEFORE_ADDED}
        changed = [k for k in current if k not in _RESUMABLE_CHANGES and saved.get(k, defaults[k]) != current[k]]
        if changed:
            raise RunFolderError("--resume with other settings than the stopped run: "
                                 + ", ".join(f"{k}={current[k]!r} (run: {saved.get(k, defaults[k])!r})"
                                             for k in changed))
        return
    if any((folder / stage / "checkpoint.json").exists() for stage in STAGES):
        raise RunFolderError(f"{folder} already holds a run: add --resume to continue it, or choose another --name")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").unlink(missing_ok=True)
    write_durably(settings_path, json.dumps(current, indent=1).encode("utf-8"))


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


def run_pipeline(settings, notify=print):
    """Pretraining, SFT and RL one after the other; returns the summary of each stage."""
    backend = backend_for(settings)
    check_world_size(settings, backend)
    reward_fn = load_reward(settings.reward)
    corpus = load_corpus(settings.data, settings.data_dir or None, settings.train_file or None,
                         settings.validation_file or None, settings.test_file or None)
    for notice in corpus.notices:
        notify(f"notice: {notice}")
    pairs = load_sft_pairs(settings.sft_file or None)
    train_pairs, held_out_pairs = split_pairs(pairs)
    rl_prompts = [RL_INSTRUCTION]
    held_out_prompts = [instruction for instruction, _ in held_out_pairs]
    rl_settings(settings)  # a bad RL setting is reported now, not after pretraining
    report_prompts = [TEXT_PROMPT] + [format_prompt(i) for i in [RL_INSTRUCTION] + held_out_prompts[:2]]
    tokenizer = build_tokenizer(corpus, pairs, report_prompts)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, d_model=settings.d_model, n_layers=settings.n_layers,
                       n_heads=settings.n_heads, context_length=settings.context_length,
                       dropout=settings.dropout, dtype=settings.dtype)
    check_corpus(corpus, config.context_length)

    run = _new_run(settings, backend, config, tokenizer, notify)
    folder = run.folder
    tokens = {split: tokenizer.encode(getattr(corpus, split)) for split in ("train", "validation", "test")}

    stage_calls = {
        "pretrain": lambda s: pretrain(run, s, tokens["train"], tokens["validation"], settings.eval_windows),
        "sft": lambda s: sft(run, s, train_pairs, held_out_pairs, settings.sft_answer_chars or None),
        "rl": lambda s: reinforce(run, s, rl_settings(settings), rl_prompts, reward_fn, held_out_prompts,
                                  reference_weights=backend.state_dict(run.model)),
    }
    context = {
        "settings": dataclasses.asdict(settings), "config": config.to_dict(), "corpus": corpus.name,
        "sources": corpus.sources, "notices": corpus.notices, "vocab_size": tokenizer.vocab_size,
        "characters": {split: len(t) for split, t in tokens.items()},
        "sft_pairs": {"train": len(train_pairs), "held_out": len(held_out_pairs),
                      "file": settings.sft_file or "built-in"},
        "rl_prompt": format_prompt(RL_INSTRUCTION), "backend": backend.name, "device": backend.device,
        "machine": f"{platform.machine()}, {platform.system()}, Python {platform.python_version()}",
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    summaries = {}
    for stage in STAGES:
        checkpoint = run.stage_checkpoint(stage) if settings.resume else None
        if checkpoint is not None and checkpoint.complete:
            backend.load_state_dict(run.model, checkpoint.weights)
            summaries[stage] = checkpoint.meta
            notify(f"{stage}: already complete in {run.stage_folder(stage)}, skipped")
            continue
        _, wall_time = stage_calls[stage](_stage_settings(settings, stage))
        backend.set_training(run.model, False)
        metrics, final_samples = stage_metrics(run, stage, tokens, settings, held_out_pairs, rl_prompts, reward_fn)
        flat_groups = run.metrics.series(stage, "zero_std_frac")[1]  # RL: groups whose answers all scored alike
        if flat_groups:
            metrics["flat_group_share"] = float(np.mean(flat_groups))
        steps = getattr(settings, f"{stage}_steps")
        run.metrics.log(stage, steps, summary=True, **metrics)
        if stage == "rl":
            keep_final_samples(run, steps, final_samples)
        samples = report_samples(run, settings.seed, report_prompts, reward_fn)
        run.save(stage, steps, True, metrics=metrics,
                 extra={"wall_time": wall_time, "samples": samples, "final_samples": final_samples,
                        "train_loss": run.metrics.last(stage, "train_loss")})
        summaries[stage] = run.stage_checkpoint(stage).meta
        if run.writes:
            write_plots(folder, run.metrics)
            write_report(folder, context, summaries, run.metrics)
    return summaries, folder


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


def rl_from_checkpoint(checkpoint_folder, settings, notify=print, evaluate_before=False):
    """The RL stage alone, starting from a saved (SFT) checkpoint, in the run folder of settings.

    The model's shape and vocabulary come from the checkpoint; RL, sampling and seed settings from
    settings. evaluate_before: also log the held-out reward before RL, as step 0. Returns (run, wall
    time in seconds, the final policy's metrics on FINAL_SAMPLES answers); every number is in run.metrics,
    the answers of the last steps and the final ones in rl/samples.jsonl.
    """
    checkpoint = load_checkpoint(checkpoint_folder)
    backend = backend_for(settings)
    pairs = load_sft_pairs(settings.sft_file or None)
    held_out_prompts = [instruction for instruction, _ in split_pairs(pairs)[1]]
    run = _new_run(settings, backend, checkpoint.config, checkpoint.tokenizer, notify)
    backend.load_state_dict(run.model, checkpoint.weights)
    backend.set_training(run.model, False)
    reward_fn = load_reward(settings.reward)
    if evaluate_before:  # the held-out reward before RL, as step 0 (drawn as the stage's evaluations draw)
        run.metrics.log("rl", 0, **reward_metrics(run, held_out_prompts, reward_fn, 4,
                                                  stream(run.seed, "rl/evaluation"), prefix="heldout_reward"))
    _, wall_time = reinforce(run, _stage_settings(settings, "rl"), rl_settings(settings), [RL_INSTRUCTION],
                             reward_fn, held_out_prompts, checkpoint.weights)
    backend.set_training(run.model, False)
    final, records = policy_samples(run, RL_INSTRUCTION, reward_fn, FINAL_SAMPLES,
                                    stream(settings.seed, "stage_metrics"))
    run.metrics.log("rl", settings.rl_steps, summary=True, **final)
    keep_final_samples(run, settings.rl_steps, records)
    return run, wall_time, final


__all__ = ["PipelineSettings", "PRESETS", "settings_for", "run_pipeline", "RunFolderError", "CheckpointError"]
