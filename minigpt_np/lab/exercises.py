"""The exercises, in reading order: what each asks, its cases, its reference and its usual mistakes.

An op exercise (1-8) asks for the backward of one of the model's ops: the stub holds the plain op's
forward (``functional.py``) and a ``backward(grad)`` to write; the grader compares the output and every
input's gradient for a random upstream gradient. A function exercise (9-13) asks for a whole function of
plain numpy arrays (AdamW, clipping, the SFT mask, the REINFORCE loss, the exact KL); the grader compares
what it returns. Every reference is the project's own code; every mistake's prediction is written here,
from the case's inputs, as that mistake computes it.
"""
import ast
import inspect
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable

import numpy as np

from .. import functional
from ..autograd import Tensor
from ..nn import Parameter
from ..optim import AdamW, clip_grad_norm_
from ..train.data import IGNORE


@dataclass
class Mistake:
    message: str  # what the grader says when it recognises this mistake
    predict: Callable  # (case, the reference's parts) -> {part: what this mistake gives}


@dataclass
class Exercise:
    name: str  # the function the learner writes
    title: str
    task: str  # the stub's docstring: what to compute, the shapes
    code: str  # the stub's function: signature, given code, and raise NotImplementedError where the learner writes
    reference: Callable
    cases: Callable  # rng -> list of cases (SimpleNamespace: description, inputs, fixed, seed)
    run: Callable  # (function, case) -> {part: array}
    mistakes: list = field(default_factory=list)


def case(description, seed, inputs=None, **fixed):
    return SimpleNamespace(description=description, seed=seed, inputs=inputs or {}, fixed=fixed)


# ---------------------------------------------------------------------------- op exercises: the backward
def upstream(case, shape):
    """The gradient arriving at the op's output: the same random numbers for the learner and the reference."""
    return np.random.default_rng(case.seed).standard_normal(shape)


def op_runner(call):
    """run(fn, case) for an op: its output and the gradient of each input for the upstream gradient."""
    def run(function, case):
        tensors = {name: Tensor(array.copy(), requires_grad=True) for name, array in case.inputs.items()}
        out = call(function, tensors, case.fixed)
        if not isinstance(out, Tensor):
            raise TypeError(f"the op must return a Tensor (Tensor.from_op(...)), not {type(out).__name__}")
        out.backward(upstream(case, out.shape))
        parts = {"output": out.data}
        for name, tensor in tensors.items():
            parts[f"d {name}"] = tensor.grad if tensor.grad is not None else np.zeros_like(tensor.data)
        return parts
    return run


def backward_stub(op, given=None):
    """The plain op's code without its docstring, its backward's body replaced by the place to write it."""
    source = inspect.getsource(getattr(functional, op)) if given is None else given
    function = ast.parse(source).body[0]
    lines = source.splitlines()
    header, body = lines[:function.body[0].lineno - 1], lines[function.body[0].end_lineno:]
    start = next(i for i, line in enumerate(body) if line.strip() == "def backward(grad):")
    end = next(i for i, line in enumerate(body)  # the first line after the backward's body
               if i > start and line.strip() and not line.startswith("        "))
    todo = ["    def backward(grad):", "        # your code: the gradient of each input, in the order of the parents",
            '        raise NotImplementedError("write the backward")', ""]
    return "\n".join(header + ['    """{task}"""'] + body[:start] + todo + body[end:])


def layer_norm_parts(case):
    x, w = case.inputs["x"], case.inputs["weight"]
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    r = 1 / np.sqrt(var + 1e-5)
    xhat = (x - mean) * r
    g = upstream(case, x.shape)
    return r, xhat, g, g * w


def attention_grads(case, softmax_backward=None, q_scale=True, k_scale=True, transpose_k=True):
    """d qkv of causal attention from the case's upstream gradient, with the steps a mistake changes."""
    qkv, H = case.inputs["qkv"], case.fixed["n_heads"]
    B, T, C3 = qkv.shape
    D = C3 // 3 // H
    q, k, v = qkv.reshape(B, T, 3, H, D).transpose(2, 0, 3, 1, 4)
    scores = np.where(functional.causal_mask(T), -np.inf, q @ k.swapaxes(-1, -2) / math.sqrt(D))
    P = functional.softmax_array(scores)
    g = upstream(case, (B, T, C3 // 3)).reshape(B, T, H, D).transpose(0, 2, 1, 3)
    dv, dP = P.swapaxes(-1, -2) @ g, g @ v.swapaxes(-1, -2)
    dS = (softmax_backward or (lambda P, dP: P * (dP - (dP * P).sum(-1, keepdims=True))))(P, dP)
    dq = dS @ k / (math.sqrt(D) if q_scale else 1.0)
    dk = (dS.swapaxes(-1, -2) if transpose_k else dS) @ q / (math.sqrt(D) if k_scale else 1.0)
    return {"d qkv": np.stack([dq, dk, dv]).transpose(1, 3, 0, 2, 4).reshape(B, T, C3)}


def dropout_given():
    return '''def dropout(x, p, training, rng=None, mask=None):
    """{task}"""
    if not training or p == 0.0:
        return x
    if mask is None:
        mask = dropout_mask(x.shape, p, rng, x.dtype)
    out = x.data * mask

    def backward(grad):
        pass

    return Tensor.from_op(out, (x,), backward, "dropout")
'''


def _op_cases(make):
    return lambda rng: [make(rng, index) for index in range(3)]


def _embedding_case(rng, i):
    V, C = (4, 3, 5)[i], (3, 2, 4)[i]
    return case(f"ids (2, 6) of {V} (repeated), weight ({V}, {C})", i, {"weight": rng.standard_normal((V, C))},
                ids=rng.integers(0, V, (2, 6)))


def _embedding_assigned(case, expected):
    grad_w = np.zeros_like(case.inputs["weight"])
    grad_w[case.fixed["ids"]] = upstream(case, expected["output"].shape)
    return {"d weight": grad_w}


def _linear_case(rng, i):
    B, T, n_in, n_out = [(2, 3, 4, 5), (1, 4, 3, 2), (3, 2, 2, 6)][i]
    return case(f"x ({B}, {T}, {n_in}), weight ({n_out}, {n_in})", i, {
        "x": rng.standard_normal((B, T, n_in)), "weight": rng.standard_normal((n_out, n_in)),
        "bias": rng.standard_normal(n_out)})


def _layer_norm_case(rng, i):
    B, T, C, shift = [(2, 3, 5, 0.0), (1, 4, 8, 3.0), (3, 2, 3, -2.0)][i]
    return case(f"x ({B}, {T}, {C})", i, {"x": rng.standard_normal((B, T, C)) + shift,
                                          "weight": rng.standard_normal(C), "bias": rng.standard_normal(C)})


def _layer_norm_dx(case, term2=True, term3=True, r_factor=True, weight=True):
    r, xhat, g, gh = layer_norm_parts(case)
    gh = gh if weight else g
    dx = gh - (gh.mean(-1, keepdims=True) if term2 else 0) - (xhat * (gh * xhat).mean(-1, keepdims=True) if term3 else 0)
    return {"d x": dx * (r if r_factor else 1.0)}


def _vector_case(scale):
    def make(rng, i):
        shape = [(2, 3, 5), (7,), (1, 4, 3)][i]
        return case(f"x {shape}", i, {"x": rng.standard_normal(shape) * scale})
    return make


def _attention_case(rng, i):
    B, T, H, D = [(2, 4, 2, 2), (1, 5, 1, 3), (2, 3, 3, 2)][i]
    return case(f"qkv ({B}, {T}, {3 * H * D}), {H} heads", i, {"qkv": rng.standard_normal((B, T, 3 * H * D))},
                n_heads=H)


def _dropout_case(rng, i):
    shape, p = [((2, 3, 4), 0.5), ((9,), 0.1), ((1, 5, 3), 0.3)][i]
    return case(f"x {shape}, p {p}, a fixed mask", i, {"x": rng.standard_normal(shape)}, p=p,
                mask=functional.dropout_mask(shape, p, rng, np.float64))


def _cross_entropy_case(rng, i):
    B, T, V = [(2, 3, 5), (1, 6, 3), (3, 2, 7)][i]
    targets = rng.integers(0, V, (B, T))
    targets[rng.random((B, T)) < 0.4] = IGNORE
    targets[0, 0], targets[-1, -1] = 1, IGNORE  # at least one counted and one ignored
    return case(f"logits ({B}, {T}, {V}), some targets ignored", i, {"logits": rng.standard_normal((B, T, V)) * 2},
                targets=targets)


def _gelu_dx(case, product_rule=True, x_factor=True):
    x = case.inputs["x"]
    g = upstream(case, x.shape)
    density = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return {"d x": g * (functional.normal_cdf(x) + ((x if x_factor else 1.0) * density if product_rule else 0.0))}


def _scaled_third(expected, thirds, factor):
    d = expected["d qkv"].copy()
    C = d.shape[-1] // 3
    for third in thirds:
        d[..., third * C:(third + 1) * C] *= factor
    return {"d qkv": d}


def _head_width(case):
    return case.inputs["qkv"].shape[-1] // 3 // case.fixed["n_heads"]


OP_EXERCISES = [
    Exercise(
        "embedding", "the embedding's backward",
        "out[b, t] = W[ids[b, t]] (given). Write backward(grad): grad (B, T, C) -> (d W,) with d W (V, C):\n"
        "row i of W gets the sum of grad over every position whose id is i; rows never used get 0.",
        backward_stub("embedding"), functional.embedding, _op_cases(_embedding_case),
        op_runner(lambda fn, t, f: fn(f["ids"], t["weight"])),
        [Mistake("your d W keeps one position per id (an assignment, grad_w[ids] = grad): positions with the "
                 "same id must add up (np.add.at)", _embedding_assigned)]),
    Exercise(
        "linear", "the linear layer's backward",
        "out = x @ W^T + b (given), x (..., in), W (out, in), b (out,). Write backward(grad): grad (..., out) ->\n"
        "(d x, d W, d b) with the shapes of x, W and b. Flatten the positions to rows first.",
        backward_stub("linear"), functional.linear, _op_cases(_linear_case),
        op_runner(lambda fn, t, f: fn(t["x"], t["weight"], t["bias"])),
        [Mistake("your d W is the transpose: d W = G^T @ X has W's shape (out, in)",
                 lambda c, e: {"d weight": e["d weight"].T}),
         Mistake("your d b is the mean over the rows, not the sum: every row adds b once",
                 lambda c, e: {"d bias": e["d bias"] / np.prod(c.inputs["x"].shape[:-1])})]),
    Exercise(
        "layer_norm", "layer norm's backward",
        "xhat = (x - mean) * r with r = 1 / sqrt(var + eps), out = xhat * w + b, over the last axis (given).\n"
        "Write backward(grad) -> (d x, d weight, d bias). Three paths lead from x to xhat: directly, through the\n"
        "mean and through r; d x needs all three.",
        backward_stub("layer_norm"), functional.layer_norm, _op_cases(_layer_norm_case),
        op_runner(lambda fn, t, f: fn(t["x"], t["weight"], t["bias"])),
        [Mistake("your d x equals the reference without the term through the variance (term 3: "
                 "- xhat * mean(gh * xhat))", lambda c, e: _layer_norm_dx(c, term3=False)),
         Mistake("your d x equals the reference without the term through the mean (term 2: - mean(gh))",
                 lambda c, e: _layer_norm_dx(c, term2=False)),
         Mistake("your d x lacks the factor r = 1 / sqrt(var + eps) in front",
                 lambda c, e: _layer_norm_dx(c, r_factor=False)),
         Mistake("your d x starts from grad, not from gh = grad * weight (the gradient at xhat)",
                 lambda c, e: _layer_norm_dx(c, weight=False))]),
    Exercise(
        "softmax", "softmax's backward",
        "out = softmax(x) along the last axis (given). Write backward(grad) -> (d x,), d x of x's shape.\n"
        "Every output depends on every input of its row.",
        backward_stub("softmax"), functional.softmax, _op_cases(_vector_case(1.0)),
        op_runner(lambda fn, t, f: fn(t["x"])),
        [Mistake("you returned g * out, missing - out * sum(g * out): every output depends on every input of "
                 "its row", lambda c, e: {"d x": upstream(c, e["output"].shape) * e["output"]})]),
    Exercise(
        "attention", "causal self-attention's backward",
        "The forward (given) splits qkv (B, T, 3C) into heads, S = q k^T / sqrt(D), masks the future, P =\n"
        "softmax(S), O = P v, merges the heads. Write backward(grad): grad (B, T, C) -> (d qkv,) packed as qkv\n"
        "was, the steps in reverse (no dropout in the graded cases).",
        backward_stub("attention"), functional.attention, _op_cases(_attention_case),
        op_runner(lambda fn, t, f: fn(t["qkv"], f["n_heads"])),
        [Mistake("your d q lacks the 1/sqrt(D) of the scores", lambda c, e: attention_grads(c, q_scale=False)),
         Mistake("your d q and d k lack the 1/sqrt(D) of the scores",
                 lambda c, e: attention_grads(c, q_scale=False, k_scale=False)),
         Mistake("your softmax backward is dP * P, missing - P * rowsum(dP * P)",
                 lambda c, e: attention_grads(c, softmax_backward=lambda P, dP: dP * P)),
         Mistake("your d k uses dS, not its transpose: d k = dS^T q / sqrt(D)",
                 lambda c, e: attention_grads(c, transpose_k=False))]),
    Exercise(
        "gelu", "GELU's backward",
        "out = x * Phi(x), Phi the standard normal CDF (given; normal_cdf). Write backward(grad) -> (d x,).\n"
        "phi(x) = exp(-x^2 / 2) / sqrt(2 pi) is Phi's derivative.",
        backward_stub("gelu"), functional.gelu, _op_cases(_vector_case(3.0)),
        op_runner(lambda fn, t, f: fn(t["x"])),
        [Mistake("your d x is grad * Phi(x): the product rule gives a second term, x * phi(x)",
                 lambda c, e: _gelu_dx(c, product_rule=False)),
         Mistake("your d x is grad * (Phi(x) + phi(x)): the second term is x * phi(x)",
                 lambda c, e: _gelu_dx(c, x_factor=False))]),
    Exercise(
        "dropout", "dropout's backward",
        "In training out = x * m with m = keep / (1 - p) (given; the mask m is fixed in the graded cases).\n"
        "Write backward(grad) -> (d x,).",
        backward_stub("dropout", dropout_given()), functional.dropout, _op_cases(_dropout_case),
        op_runner(lambda fn, t, f: fn(t["x"], f["p"], True, mask=f["mask"])),
        [Mistake("your d x is grad: the backward must apply the same mask as the forward",
                 lambda c, e: {"d x": upstream(c, c.inputs["x"].shape)}),
         Mistake("your d x is grad * keep, without the scale 1 / (1 - p) that the forward applied",
                 lambda c, e: {"d x": upstream(c, c.inputs["x"].shape) * (c.fixed["mask"] > 0)})]),
    Exercise(
        "cross_entropy", "cross-entropy's backward, with ignored positions",
        "loss = mean over the counted positions of -log softmax(logits)[target]; a position whose target is\n"
        "ignore_index is not counted (given). Write backward(grad) -> (d logits,), for reduction 'mean'\n"
        "(the graded one) and, if you like, 'sum' and 'none'.",
        backward_stub("cross_entropy"), functional.cross_entropy, _op_cases(_cross_entropy_case),
        op_runner(lambda fn, t, f: fn(t["logits"], f["targets"])),
        [Mistake("you averaged over all positions, ignored ones included: the mean is over the counted positions",
                 lambda c, e: {"d logits": e["d logits"] * (c.fixed["targets"] != IGNORE).sum()
                               / c.fixed["targets"].size}),
         Mistake("your d logits lacks the 1 / (number of counted positions) of the mean",
                 lambda c, e: {"d logits": e["d logits"] * (c.fixed["targets"] != IGNORE).sum()})]),
]


# ---------------------------------------------------------------------------- function exercises
def adamw_reference(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                    weight_decay=0.01):
    """One step of the project's AdamW (minigpt_np/optim.py) on one parameter, from the given state."""
    p = Parameter(np.array(param, dtype=np.float64))
    optimizer = AdamW([p], lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
    optimizer.load_state_dict({"steps": [step - 1], "lr": lr, "betas": list(betas), "eps": eps,
                               "weight_decay": weight_decay, "exp_avg": [exp_avg], "exp_avg_sq": [exp_avg_sq]})
    p.grad = np.array(grad, dtype=np.float64)
    optimizer.step()
    return p.data, optimizer.exp_avg[0], optimizer.exp_avg_sq[0]


def _adamw_case(rng, i):
    shape = [(3, 4), (5,), (2, 2, 3)][i]
    return case(f"a parameter {shape}, 3 steps, lr 0.1, weight decay 0.1", i, {"param": rng.standard_normal(shape)},
                grads=[rng.standard_normal(shape) for _ in range(3)], lr=0.1, betas=(0.9, 0.999), eps=1e-8,
                weight_decay=0.1)


def _adamw_run(function, case):
    """Three steps, each from the state the previous one returned."""
    f = case.fixed
    param = case.inputs["param"].copy()
    m, v = np.zeros_like(param), np.zeros_like(param)
    parts = {}
    for t, grad in enumerate(f["grads"], 1):
        param, m, v = (np.array(a, dtype=np.float64) for a in function(
            param.copy(), grad.copy(), m.copy(), v.copy(), t, lr=f["lr"], betas=f["betas"], eps=f["eps"],
            weight_decay=f["weight_decay"]))
        parts[f"parameter after step {t}"] = param
    return {**parts, "exp_avg": m, "exp_avg_sq": v}


def _adamw_variant(case, l2=False, bias_correction=True):
    f = case.fixed
    (beta1, beta2), lr, wd = f["betas"], f["lr"], f["weight_decay"]
    p = case.inputs["param"].copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    parts = {}
    for t, g in enumerate(f["grads"], 1):
        if l2:
            g = g + wd * p
        else:
            p = p * (1 - lr * wd)
        m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
        m_hat, v_hat = (m / (1 - beta1 ** t), v / (1 - beta2 ** t)) if bias_correction else (m, v)
        p = p - lr * m_hat / (np.sqrt(v_hat) + f["eps"])
        parts[f"parameter after step {t}"] = p
    return {**parts, "exp_avg": m, "exp_avg_sq": v}


def clip_reference(grads, max_norm):
    """The project's clip_grad_norm_ on parameters holding these gradients: (clipped gradients, total norm)."""
    params = [Parameter(np.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = np.array(g, dtype=np.float64)
    total = clip_grad_norm_(params, max_norm)
    return [p.grad for p in params], total


def _clip_case(rng, i):
    shapes, max_norm = [([(3, 4), (5,)], 1.0), ([(2, 2), (3,), (4, 1)], 2.0), ([(6,), (2, 3)], 100.0)][i]
    return case(f"{len(shapes)} gradients, max_norm {max_norm}", i, fixed_grads=[rng.standard_normal(s) for s in shapes],
                max_norm=max_norm)


def _clip_run(function, case):
    clipped, total = function([g.copy() for g in case.fixed["fixed_grads"]], case.fixed["max_norm"])
    return {"total norm": np.float64(total), **{f"gradient {i}": np.asarray(g) for i, g in enumerate(clipped)}}


def _clip_variant(case, per_tensor=False, always=False):
    grads, max_norm = case.fixed["fixed_grads"], case.fixed["max_norm"]
    total = math.sqrt(sum(float((g * g).sum()) for g in grads))
    parts = {"total norm": np.float64(total)}
    for i, g in enumerate(grads):
        norm = float(np.sqrt((g * g).sum())) if per_tensor else total
        scale = max_norm / (norm + 1e-6)
        parts[f"gradient {i}"] = g * scale if (always or scale < 1.0) else g
    return parts


def answer_targets_reference(ids, prompt_length):
    """The next-character targets of one SFT example, the prompt's positions ignored."""
    targets = np.array(ids[1:], dtype=np.int64)
    targets[: prompt_length - 1] = IGNORE
    return targets


def _sft_case(rng, i):
    prompt_length, answer_length = [(12, 6), (5, 9), (20, 3)][i]
    ids = rng.integers(1, 30, prompt_length + answer_length + 1)
    ids[-1] = 0  # the closing newline
    return case(f"a prompt of {prompt_length} ids, an answer of {answer_length} and the closing newline", i,
                ids=ids, prompt_length=prompt_length)


def _sft_variant(case, prompt=False, newline=True, shift=0):
    ids, n = case.fixed["ids"], case.fixed["prompt_length"]
    targets = np.array(ids[1:], dtype=np.int64)
    if not prompt:
        targets[: n - 1 + shift] = IGNORE
    if not newline:
        targets[-1] = IGNORE
    return {"targets": targets}


def reinforce_loss_reference(log_probs, mask, rewards, G):
    """-(1/N) sum_i A_i sum_t log p_it over each answer's tokens, with RLOO advantages (the project's own)."""
    from ..train.rl import group_advantages, token_weights
    advantage = group_advantages(np.asarray(rewards, dtype=np.float64), G, "rloo", 0.0)
    weights = token_weights(advantage, mask.sum(axis=1), "sequence_sum")
    return -float((weights[:, None] * np.where(mask, log_probs, 0.0)).sum())


def _reinforce_case(rng, i):
    P, G, L = [(1, 4, 6), (2, 3, 5), (2, 5, 4)][i]
    N = P * G
    lengths = rng.integers(1, L + 1, N)
    return case(f"{P} prompt(s) x {G} answers of up to {L} tokens", i, log_probs=-rng.random((N, L)) * 3,
                mask=np.arange(L)[None, :] < lengths[:, None], rewards=rng.random(N) * 2, G=G)


def _reinforce_run(function, case):
    f = case.fixed
    return {"loss": np.float64(function(f["log_probs"].copy(), f["mask"].copy(), f["rewards"].copy(), f["G"]))}


def _reinforce_variant(case, method="rloo", sign=1.0, per_token_mean=False):
    from ..train.rl import group_advantages
    f = case.fixed
    advantage = group_advantages(f["rewards"], f["G"], method, 0.0)
    sums = np.where(f["mask"], f["log_probs"], 0.0).sum(axis=1)
    if per_token_mean:
        sums = sums / f["mask"].sum(axis=1)
    return {"loss": np.float64(-sign * (advantage * sums).mean())}


def exact_kl_reference(policy_logits, reference_logits):
    from ..train.rl import kl_and_entropy
    return kl_and_entropy(policy_logits, reference_logits)[0]


def _kl_case(rng, i):
    N, V = [(4, 5), (3, 9), (6, 3)][i]
    return case(f"{N} positions, {V} characters", i, policy=rng.standard_normal((N, V)) * 2,
                reference=rng.standard_normal((N, V)) * 2)


def _kl_run(function, case):
    return {"kl": np.asarray(function(case.fixed["policy"].copy(), case.fixed["reference"].copy()), dtype=np.float64)}


def _kl_variant(case, reverse=False, raw=False):
    p, q = case.fixed["policy"], case.fixed["reference"]
    log_p, log_q = (p, q) if raw else (functional.log_softmax_array(p), functional.log_softmax_array(q))
    if reverse:
        log_p, log_q = log_q, log_p
    return {"kl": (np.exp(log_p) * (log_p - log_q)).sum(-1)}


def function_stub(signature, returns):
    return f'{signature}\n    """{{task}}"""\n    # your code\n    raise NotImplementedError("write {returns}")\n'


FUNCTION_EXERCISES = [
    Exercise(
        "adamw_step", "one AdamW step",
        "One step of AdamW on one parameter, at step t = 1, 2, ... (param, grad, exp_avg, exp_avg_sq: arrays of\n"
        "one shape). Decoupled weight decay: p <- p * (1 - lr * weight_decay), then the Adam update with m and v\n"
        "(the moving averages of g and g^2) corrected for their zero start by 1 - beta^t. Return the new\n"
        "(param, exp_avg, exp_avg_sq).",
        function_stub("def adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8,\n"
                      "               weight_decay=0.01):", "the step"),
        adamw_reference, _op_cases(_adamw_case), _adamw_run,
        [Mistake("this is L2 regularisation (decay added to the gradient, g + weight_decay * p), not decoupled "
                 "weight decay (p * (1 - lr * weight_decay), apart from the Adam update)",
                 lambda c, e: _adamw_variant(c, l2=True)),
         Mistake("no bias correction: m and v must be divided by 1 - beta1^t and 1 - beta2^t",
                 lambda c, e: _adamw_variant(c, bias_correction=False))]),
    Exercise(
        "clip_grad_norm", "gradient clipping by the global norm",
        "grads: a list of arrays. total = sqrt(sum over all of them of g^2); if total > max_norm, multiply every\n"
        "gradient by max_norm / (total + 1e-6). Return (the gradients, total), total before clipping.",
        function_stub("def clip_grad_norm(grads, max_norm):", "the clipping"),
        clip_reference, _op_cases(_clip_case), _clip_run,
        [Mistake("each gradient was clipped by its own norm: clipping scales all of them together, by the global "
                 "norm", lambda c, e: _clip_variant(c, per_tensor=True)),
         Mistake("you scaled the gradients although their norm was below max_norm: clip only when it is larger",
                 lambda c, e: _clip_variant(c, always=True))]),
    Exercise(
        "answer_targets", "the SFT answer mask",
        "ids: one SFT example as ids, the prompt (its first prompt_length ids), the answer, the closing newline.\n"
        "The model reads ids[:-1] and predicts ids[1:]. Return those targets with -100 (ignored) wherever the\n"
        "character to predict belongs to the prompt: SFT trains the answer, not the prompt, which the user writes.",
        function_stub("def answer_targets(ids, prompt_length):", "the targets"),
        answer_targets_reference, _op_cases(_sft_case),
        lambda fn, c: {"targets": np.asarray(fn(c.fixed["ids"].copy(), c.fixed["prompt_length"]))},
        [Mistake("the prompt is trained too: a target that is a prompt character must be -100",
                 lambda c, e: _sft_variant(c, prompt=True)),
         Mistake("the closing newline is not trained: the model would never learn where an answer ends",
                 lambda c, e: _sft_variant(c, newline=False)),
         Mistake("off by one: the first answer character (predicted at the prompt's last position) is not trained",
                 lambda c, e: _sft_variant(c, shift=1)),
         Mistake("off by one: the prompt's last character is trained as well",
                 lambda c, e: _sft_variant(c, shift=-1))]),
    Exercise(
        "reinforce_loss", "the REINFORCE loss with leave-one-out advantages",
        "log_probs (N, L): each sampled token's log-probability; mask (N, L): True at an answer's tokens; rewards\n"
        "(N,): the answers in groups of G (one prompt each). A_i = r_i - mean of the other G - 1 rewards of its\n"
        "group (RLOO). Return loss = -(1/N) sum_i A_i * (sum of answer i's token log-probabilities).",
        function_stub("def reinforce_loss(log_probs, mask, rewards, G):", "the loss"),
        reinforce_loss_reference, _op_cases(_reinforce_case), _reinforce_run,
        [Mistake("the advantage includes the sample itself (group mean, not leave-one-out)",
                 lambda c, e: _reinforce_variant(c, method="group_mean")),
         Mistake("the sign is flipped: minimising the loss must raise the log-probability of answers with A > 0",
                 lambda c, e: _reinforce_variant(c, sign=-1.0)),
         Mistake("you averaged each answer's log-probabilities over its tokens; this loss sums them",
                 lambda c, e: _reinforce_variant(c, per_token_mean=True))]),
    Exercise(
        "exact_kl", "the exact KL to a reference policy",
        "policy_logits, reference_logits (N, V): two models' logits at the same N contexts. Return (N,):\n"
        "KL(p || q) = sum_v p_v (log p_v - log q_v), p and q their softmax, summed over the whole vocabulary.",
        function_stub("def exact_kl(policy_logits, reference_logits):", "the KL"),
        exact_kl_reference, _op_cases(_kl_case), _kl_run,
        [Mistake("this is KL(q || p): the direction is reversed (the expectation is under the policy p)",
                 lambda c, e: _kl_variant(c, reverse=True)),
         Mistake("the logits were used as log-probabilities: take log_softmax first",
                 lambda c, e: _kl_variant(c, raw=True))]),
]

EXERCISES = OP_EXERCISES + FUNCTION_EXERCISES


def stub_text(number, exercise):
    """The file ``python -m minigpt_np.lab start`` writes: the task, the imports, the function to complete."""
    task = exercise.task.replace("\n", "\n    ")
    return (f'"""Exercise {number}: {exercise.title}.\n\nWrite the part that raises NotImplementedError, then run\n'
            f'    python -m minigpt_np.lab check {number}\n"""\nimport math\n\nimport numpy as np\n\n'
            "from minigpt_np.autograd import Tensor\n"
            "from minigpt_np.functional import causal_mask, dropout_mask, log_softmax_array, normal_cdf, softmax_array\n"
            "\n\n" + exercise.code.replace("{task}", task) + "\n")
