"""The lab's grader: the project's own code passes every exercise, and each usual mistake, written out here
as a learner would write it, is named by its message."""
import math

import numpy as np
import pytest

from minigpt_np import fast
from minigpt_np import functional as F
from minigpt_np.autograd import Tensor
from minigpt_np.lab import EXERCISES, grade
from minigpt_np.lab.__main__ import main as lab_main

BY_NAME = {exercise.name: exercise for exercise in EXERCISES}


def messages(exercise_name):
    return [mistake.message for mistake in BY_NAME[exercise_name].mistakes]


# ---------------------------------------------------------------------------- solutions, written independently
def adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
               l2=False, bias_correction=True):
    beta1, beta2 = betas
    if l2:
        grad = grad + weight_decay * param
    else:
        param = param * (1 - lr * weight_decay)
    exp_avg = beta1 * exp_avg + (1 - beta1) * grad
    exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * grad ** 2
    m_hat = exp_avg / (1 - beta1 ** step) if bias_correction else exp_avg
    v_hat = exp_avg_sq / (1 - beta2 ** step) if bias_correction else exp_avg_sq
    return param - lr * m_hat / (np.sqrt(v_hat) + eps), exp_avg, exp_avg_sq


def clip_grad_norm(grads, max_norm, per_tensor=False, always=False):
    total = math.sqrt(sum(float(np.sum(g ** 2)) for g in grads))
    out = []
    for g in grads:
        norm = float(np.sqrt(np.sum(g ** 2))) if per_tensor else total
        out.append(g * (max_norm / (norm + 1e-6)) if always or norm > max_norm else g)
    return out, total


def answer_targets(ids, prompt_length, first=None, newline=True):
    targets = list(ids[1:])
    first = prompt_length - 1 if first is None else first  # targets[t] is ids[t + 1]
    targets = [-100 if t < first else target for t, target in enumerate(targets)]
    if not newline:
        targets[-1] = -100
    return np.array(targets)


def reinforce_loss(log_probs, mask, rewards, G, leave_one_out=True, sign=1.0, mean_over_tokens=False):
    N = len(rewards)
    total = 0.0
    for i in range(N):
        group = rewards[i // G * G: i // G * G + G]
        others = (group.sum() - rewards[i]) / (G - 1) if leave_one_out else group.mean()
        log_p = log_probs[i][mask[i]].sum()
        if mean_over_tokens:
            log_p = log_p / mask[i].sum()
        total += (rewards[i] - others) * log_p
    return -sign * total / N


def exact_kl(policy_logits, reference_logits, reverse=False, raw=False):
    def log_softmax(z):
        z = z - z.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    log_p, log_q = (policy_logits, reference_logits) if raw else (log_softmax(policy_logits), log_softmax(reference_logits))
    if reverse:
        log_p, log_q = log_q, log_p
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


# The ops with a fast twin are graded on the twin (written apart from the plain op the grader compares with);
# linear, softmax and cross-entropy have one form only.
SOLUTIONS = {"embedding": fast.embedding, "linear": F.linear, "layer_norm": fast.layer_norm, "softmax": F.softmax,
             "attention": fast.attention, "gelu": fast.gelu, "dropout": fast.dropout, "cross_entropy": F.cross_entropy,
             "adamw_step": adamw_step, "clip_grad_norm": clip_grad_norm, "answer_targets": answer_targets,
             "reinforce_loss": reinforce_loss, "exact_kl": exact_kl}


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda exercise: exercise.name)
def test_the_right_answer_passes(exercise):
    result = grade(exercise, SOLUTIONS[exercise.name])
    assert result.passed, result.lines


# ---------------------------------------------------------------------------- wrong backwards, as learners write them
def with_backward(op, wrong):
    """op's forward (the plain one), with the backward wrong(inputs' arrays, out, grad) -> gradients."""
    def function(*args, **kwargs):
        right = op(*args, **kwargs)
        tensors = [a for a in args if isinstance(a, Tensor)]
        arrays = [t.data for t in tensors]
        return Tensor.from_op(right.data, tuple(tensors), lambda g: wrong(arrays, right.data, g, args, kwargs), "wrong")
    return function


def layer_norm_wrong(term2=True, term3=True, r=True, use_weight=True):
    def backward(arrays, out, g, args, kwargs):
        x, w, _ = arrays
        mu, rstd = x.mean(-1, keepdims=True), 1 / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        xhat = (x - mu) * rstd
        gh = g * w if use_weight else g
        dx = gh - (gh.mean(-1, keepdims=True) if term2 else 0) - (xhat * (gh * xhat).mean(-1, keepdims=True) if term3 else 0)
        C = x.shape[-1]
        return dx * (rstd if r else 1), (g * xhat).reshape(-1, C).sum(0), g.reshape(-1, C).sum(0)
    return with_backward(F.layer_norm, backward)


def linear_wrong(transpose_w=False, mean_b=False):
    def backward(arrays, out, g, args, kwargs):
        x, w, _ = arrays
        X, G = x.reshape(-1, x.shape[-1]), g.reshape(-1, w.shape[0])
        dw = X.T @ G if transpose_w else G.T @ X
        return (G @ w).reshape(x.shape), dw, G.mean(0) if mean_b else G.sum(0)
    return with_backward(F.linear, backward)


def embedding_assigned(ids, weight):
    def backward(arrays, out, g, args, kwargs):
        dw = np.zeros_like(arrays[0])
        dw[np.asarray(ids)] = g
        return (dw,)
    return with_backward(F.embedding, backward)(ids, weight)


def attention_wrong(scale_q=True, scale_k=True, full_softmax=True, transpose=True):
    def backward(arrays, out, g, args, kwargs):
        (qkv,), H = arrays, args[1]
        B, T, C3 = qkv.shape
        D = C3 // 3 // H
        q, k, v = [qkv[..., i * C3 // 3:(i + 1) * C3 // 3].reshape(B, T, H, D).transpose(0, 2, 1, 3) for i in range(3)]
        S = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D)
        S[..., np.triu(np.ones((T, T), bool), 1)] = -np.inf
        P = np.exp(S - S.max(-1, keepdims=True))
        P /= P.sum(-1, keepdims=True)
        gO = g.reshape(B, T, H, D).transpose(0, 2, 1, 3)
        dv, dP = P.transpose(0, 1, 3, 2) @ gO, gO @ v.transpose(0, 1, 3, 2)
        dS = P * (dP - (dP * P).sum(-1, keepdims=True)) if full_softmax else dP * P
        dq = dS @ k / (math.sqrt(D) if scale_q else 1)
        dk = (dS.transpose(0, 1, 3, 2) if transpose else dS) @ q / (math.sqrt(D) if scale_k else 1)
        return (np.concatenate([d.transpose(0, 2, 1, 3).reshape(B, T, C3 // 3) for d in (dq, dk, dv)], -1),)
    return with_backward(F.attention, backward)


def simple_wrong(op, backward):
    return with_backward(op, lambda arrays, out, g, args, kwargs: (backward(arrays[0], out, g, args, kwargs),))


def phi(x):
    return np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def cross_entropy_wrong(over_all=False, no_mean=False):
    def backward(z, out, g, args, kwargs):
        targets = np.asarray(args[1])
        counted = targets != -100
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        onehot = np.zeros_like(p)
        onehot[counted, targets[counted]] = 1
        d = (p - onehot) * counted[..., None]
        return g * d / (1 if no_mean else targets.size if over_all else counted.sum())
    return simple_wrong(F.cross_entropy, backward)


WRONG = [  # (exercise, the wrong function, the message it must get)
    ("embedding", embedding_assigned, 0),
    ("linear", linear_wrong(transpose_w=True), 0),
    ("linear", linear_wrong(mean_b=True), 1),
    ("layer_norm", layer_norm_wrong(term3=False), 0),
    ("layer_norm", layer_norm_wrong(term2=False), 1),
    ("layer_norm", layer_norm_wrong(r=False), 2),
    ("layer_norm", layer_norm_wrong(use_weight=False), 3),
    ("softmax", simple_wrong(F.softmax, lambda x, out, g, a, k: g * out), 0),
    ("attention", attention_wrong(scale_q=False), 0),
    ("attention", attention_wrong(scale_q=False, scale_k=False), 1),
    ("attention", attention_wrong(full_softmax=False), 2),
    ("attention", attention_wrong(transpose=False), 3),
    ("gelu", simple_wrong(F.gelu, lambda x, out, g, a, k: g * F.normal_cdf(x)), 0),
    ("gelu", simple_wrong(F.gelu, lambda x, out, g, a, k: g * (F.normal_cdf(x) + phi(x))), 1),
    ("dropout", simple_wrong(F.dropout, lambda x, out, g, a, k: g), 0),
    ("dropout", simple_wrong(F.dropout, lambda x, out, g, a, k: g * (k["mask"] != 0)), 1),
    ("cross_entropy", cross_entropy_wrong(over_all=True), 0),
    ("cross_entropy", cross_entropy_wrong(no_mean=True), 1),
    ("adamw_step", lambda *a, **k: adamw_step(*a, **k, l2=True), 0),
    ("adamw_step", lambda *a, **k: adamw_step(*a, **k, bias_correction=False), 1),
    ("clip_grad_norm", lambda g, m: clip_grad_norm(g, m, per_tensor=True), 0),
    ("clip_grad_norm", lambda g, m: clip_grad_norm(g, m, always=True), 1),
    ("answer_targets", lambda ids, n: answer_targets(ids, n, first=0), 0),
    ("answer_targets", lambda ids, n: answer_targets(ids, n, newline=False), 1),
    ("answer_targets", lambda ids, n: answer_targets(ids, n, first=n), 2),
    ("answer_targets", lambda ids, n: answer_targets(ids, n, first=n - 2), 3),
    ("reinforce_loss", lambda *a: reinforce_loss(*a, leave_one_out=False), 0),
    ("reinforce_loss", lambda *a: reinforce_loss(*a, sign=-1.0), 1),
    ("reinforce_loss", lambda *a: reinforce_loss(*a, mean_over_tokens=True), 2),
    ("exact_kl", lambda p, q: exact_kl(p, q, reverse=True), 0),
    ("exact_kl", lambda p, q: exact_kl(p, q, raw=True), 1),
]


@pytest.mark.parametrize("name, wrong, which", WRONG,
                         ids=[f"{name}-{which}" for name, _, which in WRONG])
def test_each_usual_mistake_is_named(name, wrong, which):
    result = grade(BY_NAME[name], wrong)
    assert result.status == "failed"
    assert f"  {messages(name)[which]}" in result.lines, result.lines


def test_every_mistake_has_its_test():
    tested = {(name, which) for name, _, which in WRONG}
    assert tested == {(e.name, i) for e in EXERCISES for i in range(len(e.mistakes))}


def test_an_unknown_mistake_gets_the_part_the_size_and_the_place():
    def off(x, weight, bias, eps=1e-5):  # d bias off by 1 in one place
        def backward(arrays, out, g, args, kwargs):
            right = F.layer_norm(*[Tensor(a, requires_grad=True) for a in arrays])
            right.backward(g)
            db = g.reshape(-1, g.shape[-1]).sum(0)
            db[1] += 1.0
            return right._parents[0].grad, right._parents[1].grad, db
        return with_backward(F.layer_norm, backward)(x, weight, bias)
    result = grade(BY_NAME["layer_norm"], off)
    assert result.lines[1].startswith("  d bias: differs by up to 1 (at (1,): yours"), result.lines


def test_a_wrong_shape_gets_both_shapes():
    wrong = simple_wrong(F.gelu, lambda x, out, g, a, k: g.reshape(-1))
    result = grade(BY_NAME["gelu"], wrong)
    assert result.lines[1] == "  d x: shape (30,), expected (2, 3, 5)", result.lines


def test_an_exception_gets_its_line(tmp_path):
    assert lab_main(["start", "4", "--dir", str(tmp_path)]) == 0
    path = tmp_path / "04_softmax.py"
    path.write_text(path.read_text().replace('raise NotImplementedError("write the backward")', "return (g * out,)"))
    out = __import__("io").StringIO()
    assert lab_main(["check", "4", "--dir", str(tmp_path)], out=out) == 1
    text = out.getvalue()
    assert "raised NameError: name 'g' is not defined" in text and f"at {path}:" in text and "return (g * out,)" in text


def test_the_command_line_starts_never_overwrites_and_grades(tmp_path, capsys):
    folder = str(tmp_path / "lab")
    assert lab_main(["start", "3", "--dir", folder]) == 0
    path = tmp_path / "lab" / "03_layer_norm.py"
    out = __import__("io").StringIO()
    assert lab_main(["check", "--dir", folder], out=out) == 1
    assert "3. layer_norm: not written yet" in out.getvalue()
    solved = path.read_text().replace(
        '        raise NotImplementedError("write the backward")',
        "        C = a.shape[-1]\n        gh = grad * weight.data\n"
        "        dx = rstd * (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True))\n"
        "        return dx, (grad * xhat).reshape(-1, C).sum(0), grad.reshape(-1, C).sum(0)")
    path.write_text(solved)
    assert lab_main(["start", "3", "--dir", folder]) == 2  # the learner's work is kept
    assert path.read_text() == solved
    assert "exists; your work there is kept" in capsys.readouterr().err
    out = __import__("io").StringIO()
    assert lab_main(["check", "3", "--dir", folder], out=out) == 0, out.getvalue()
    assert lab_main(["check", "99", "--dir", folder]) == 2


# ---------------------------------------------------------------------------- the model on the learner's ops
MODEL_OPS = {"01_embedding": "embedding", "02_linear": "linear", "03_layer_norm": "layer_norm",
             "05_attention": "attention", "06_gelu": "gelu", "07_dropout": "dropout"}


def plain_lab(folder):
    """A lab folder where every model exercise is solved by the project's plain op."""
    folder.mkdir()
    for stem, op in MODEL_OPS.items():
        (folder / f"{stem}.py").write_text(f"from minigpt_np.functional import {op}  # noqa: F401\n")
    return folder


def test_kernels_lab_with_the_plain_ops_trains_bit_identically_to_kernels_plain(tmp_path, capsys):
    from tests.conftest import TINY, flags, load_cli, records
    lab = plain_lab(tmp_path / "lab")
    common = flags({**TINY, "dtype": "float64", "dropout": 0.1}) + ["--preset", "quick", "--backend", "numpy",
                                                                     "--runs-dir", str(tmp_path)]
    assert load_cli().main(common + ["--kernels", "lab", "--lab-dir", str(lab), "--lab-steps", "3",
                                     "--name", "lab"]) == 0
    printed = capsys.readouterr().out
    assert all(f"lab: {op}: yours" in printed for op in MODEL_OPS.values()), printed
    assert "lab: your model trains exactly like the reference for 3 steps (largest loss difference 0)" in printed
    assert load_cli().main(common + ["--kernels", "plain", "--name", "plain"]) == 0
    timing = ("step_seconds", "wall_time")
    assert records(tmp_path / "lab", without=timing) == records(tmp_path / "plain", without=timing)


def test_kernels_lab_names_the_step_and_tensor_where_a_run_parts(tmp_path):
    from minigpt_np.lab.model import lab_kernels, side_by_side
    from minigpt_np.config import GPTConfig
    lab = plain_lab(tmp_path / "lab")
    (lab / "02_linear.py").write_text(  # right on the graded shapes (at most 6 rows), wrong on more than 100 rows
        "from minigpt_np import functional\nfrom minigpt_np.autograd import Tensor\n\n\n"
        "def linear(input, weight, bias=None):\n"
        "    out = functional.linear(input, weight, bias)\n"
        "    rows = out.data.reshape(-1, out.shape[-1]).shape[0]\n"
        "    if bias is None or rows <= 100:\n"
        "        return out\n"
        "    def backward(grad):\n"
        "        dx, dw, db = out._backward_fn(grad)\n"
        "        return dx, dw, db * 0.5\n"
        "    return Tensor.from_op(out.data, (input, weight, bias), backward, 'linear')\n")
    ops, lines = lab_kernels(lab)
    assert f"linear: yours ({lab / '02_linear.py'})" in lines
    config = GPTConfig(vocab_size=20, d_model=16, n_layers=1, n_heads=2, context_length=32, dropout=0.0)
    tokens = np.random.default_rng(0).integers(0, 20, 500)
    said = side_by_side(ops, config, tokens, steps=3, seed=0, batch_size=4)
    assert said.startswith("your run parts from the reference at step 1: the gradient of "), said
    assert "bias differs by" in said, said


def test_kernels_lab_uses_the_plain_op_where_an_exercise_fails_or_is_not_started(tmp_path):
    from minigpt_np.lab.model import lab_kernels
    lab = plain_lab(tmp_path / "lab")
    (lab / "03_layer_norm.py").unlink()
    (lab / "06_gelu.py").write_text("from minigpt_np.functional import normal_cdf, Tensor\n\n\n"
                                    "def gelu(x):\n    raise NotImplementedError\n")
    ops, lines = lab_kernels(lab)
    assert ops.layer_norm is F.layer_norm and ops.gelu is F.gelu
    assert f"layer_norm: the plain op (exercise 3 not started in {lab})" in lines
    assert "gelu: the plain op (exercise 6: not written yet; python -m minigpt_np.lab check 6)" in lines


def test_a_lab_folder_that_is_a_file_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "lab").write_text("not a folder")
    assert lab_main(["start", "1", "--dir", str(tmp_path / "lab")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --dir: cannot write ") and err.count("\n") == 1
