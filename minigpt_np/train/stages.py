"""Pretraining and SFT, written once against the Backend interface (backend.py); RL is in rl.py.

Each stage is one function whose docstring states its method, and whose step (``make_loss``) builds that
step's loss and nothing else; ``runner.train_loop`` does the rest (optimizer, resume, Ctrl-C, ranks,
logging, checkpoints), and ``evaluation`` measures it.
"""
import numpy as np

from .data import random_windows, sft_windows
from .evaluation import answer_metrics, language_model_metrics
from .runner import stream, train_loop


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
        return language_model_metrics(run, validation_tokens, eval_windows, settings.batch_size, "val")

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
    and the share of sampled answers to the held-out prompts that are well formed (format_rate).
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
        return answer_metrics(run, held_out_pairs, settings.batch_size, stream(run.seed, "sft/evaluation"))

    return train_loop(run, "sft", settings, make_loss, evaluate)
