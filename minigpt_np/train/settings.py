"""A run's settings: every setting with its default, help text and range (``PipelineSettings``, each one
also a flag of examples/run_all.py), the named starting points (``PRESETS``), their checks (``validate``),
and the check that a resumed run continues with the settings it was saved with (``_prepare_folder``).
"""
import dataclasses
import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .backend import check_backend_options, get_backend
from .checkpoint import write_durably
from .rewards import REWARDS
from .rl import ADVANTAGES, RLSettings
from .runner import STAGES
from .validation import PROBABILITY, SEED, coefficient, count, flag, positive


LEARNED_REWARDS = ("learned", "combined")  # the rewards made from the rm stage's reward model


def _setting(default, help, choices=None, valid=None):
    """A setting: its default, its --help text, and its allowed choices or numeric range (validation.Range)."""
    return field(default=default, metadata={"help": help, "choices": choices, "range": valid})


@dataclass
class PipelineSettings:
    backend: str = _setting("torch", "tensor library: torch or numpy", ("torch", "numpy"))
    device: str = _setting("cpu", "torch device: cpu or cuda (numpy runs on the CPU only)")
    kernels: str = _setting("fast", "numpy backend: the form of the model's ops, fast (for training), plain "
                            "(functional.py, the reading text) or lab (yours from --lab-dir where your exercise "
                            "passes, plain elsewhere); a checkpoint of one loads with the others",
                            ("fast", "plain", "lab"))
    lab_dir: str = _setting("lab", "--kernels lab: the folder of your exercises (python -m minigpt_np.lab)")
    lab_steps: int = _setting(50, "--kernels lab: training steps of your model beside the plain one, compared "
                              "step by step before the run", valid=count(0, 10**5))
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
    rm_steps: int = _setting(0, "reward-model steps between SFT and RL: a reward model learnt from preference pairs "
                             "(0: no reward model)", valid=count(0))
    rm_lr: float = _setting(1e-4, "reward-model learning rate", valid=positive(10.0))
    rm_eval_every: int = _setting(50, "reward-model steps between held-out accuracy checks", valid=count())
    rm_sft_samples: int = _setting(2, "reward model: the SFT policy's answers to each training instruction that are "
                                   "rejected beside the written answer (0: none)", valid=count(0, 1000))
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
    reward: str = _setting("fluent", "reward: original (coffee, \"!\", 8-20 words), guarded (the same, paid only "
                           "for answers of real words), fluent (the guarded reward, half of it paid in proportion "
                           "to the answer's word pairs that the model was taught), learned (the reward model of the rm stage: "
                           "needs --rm-steps), combined (the original, paid in proportion to the reward model's "
                           "probability that the answer beats a written one: needs --rm-steps), or module:function "
                           "returning {component: value}")


PRESETS = {
    "seed": {},  # the defaults above: the original model, pretraining and SFT, and this project's RL method
    "quick": dict(data="embedded", d_model=64, context_length=128, batch_size=16, pretrain_steps=600,
                  pretrain_lr=4e-3, pretrain_eval_every=150, sft_steps=160, sft_lr=1e-3, sft_eval_every=40,
                  rl_steps=150, rl_lr=1e-3, rl_samples=8, rl_eval_every=50, max_new_tokens=96, eval_windows=48),
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
    if settings.kernels == "lab" and not Path(settings.lab_dir).is_dir():
        raise ValueError(f"--lab-dir: {settings.lab_dir} is not a folder (python -m minigpt_np.lab start N "
                         "writes your exercises there)")
    if settings.rl_advantage in ("group_mean", "rloo", "group_zscore") and settings.rl_samples < 2:
        raise ValueError(f"--rl-samples: the {settings.rl_advantage} advantage compares the samples of a prompt, "
                         f"so it needs at least 2, got {settings.rl_samples}")
    load_reward(settings.reward)
    if settings.reward in LEARNED_REWARDS and not settings.rm_steps:
        raise ValueError(f"--reward {settings.reward}: the reward model is learnt in the run's rm stage, between SFT "
                         "and RL; give that stage steps with --rm-steps N")


def load_reward(spec):
    """"original", "guarded", "fluent", or "module:function" for a user's reward; None for "learned" and "combined" (from
    the reward model of the run's rm stage, made when that stage has trained it: reward_model.learned_reward)."""
    if spec in LEARNED_REWARDS:
        return None
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
    kernels = settings.kernels if settings.backend == "numpy" else None
    if kernels == "lab":
        from ..lab.model import lab_kernels
        kernels, _ = lab_kernels(settings.lab_dir)
    return get_backend(settings.backend, settings.device, kernels=kernels, compile=settings.compile)


class RunFolderError(ValueError):
    pass


# Settings that may change when a run is resumed (they do not change what is computed).
_RESUMABLE_CHANGES = {"resume", "progress", "device", "compile", "lab_steps"}


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
