"""AdamW and gradient clipping with torch.optim.AdamW's and clip_grad_norm_'s exact semantics."""
import math

import numpy as np


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW computes it.

    For each parameter p with gradient g, at step t = 1, 2, ...:

        p <- p * (1 - lr * weight_decay)              decoupled decay, on every parameter
        m <- beta1 * m + (1 - beta1) * g              first moment
        v <- beta2 * v + (1 - beta2) * g^2            second moment
        p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    The two (1 - beta^t) factors correct the moments' bias towards their zero start.
    A parameter whose ``.grad`` is None is skipped, and, as in torch, its own step count t
    does not advance (each parameter keeps its t).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        self.params = list(params)
        if not self.params:
            raise ValueError("AdamW got an empty parameter list")
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"invalid AdamW settings: lr={lr}, betas={betas}, eps={eps}, weight_decay={weight_decay}")
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.steps = [0] * len(self.params)
        self.exp_avg = [np.zeros_like(p.data) for p in self.params]
        self.exp_avg_sq = [np.zeros_like(p.data) for p in self.params]

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        beta1, beta2 = self.betas
        for index, (p, m, v) in enumerate(zip(self.params, self.exp_avg, self.exp_avg_sq)):
            if p.grad is None:
                continue
            self.steps[index] += 1
            t = self.steps[index]
            bias_correction1 = 1.0 - beta1 ** t
            bias_correction2_sqrt = math.sqrt(1.0 - beta2 ** t)
            step_size = self.lr / bias_correction1
            g = p.grad
            p.data *= 1.0 - self.lr * self.weight_decay
            m += (1.0 - beta1) * (g - m)  # = beta1 * m + (1 - beta1) * g, rounded as torch's lerp
            v *= beta2
            v += (1.0 - beta2) * g * g
            denom = np.sqrt(v) / bias_correction2_sqrt + self.eps
            p.data -= step_size * (m / denom)

    def state_dict(self):
        """The optimizer's state as plain numbers and numpy arrays (for checkpoints)."""
        return {
            "steps": list(self.steps), "lr": self.lr, "betas": list(self.betas), "eps": self.eps,
            "weight_decay": self.weight_decay,
            "exp_avg": [m.copy() for m in self.exp_avg], "exp_avg_sq": [v.copy() for v in self.exp_avg_sq],
        }

    def load_state_dict(self, state):
        if len(state["exp_avg"]) != len(self.params):
            raise ValueError(f"optimizer state has {len(state['exp_avg'])} parameters, expected {len(self.params)}")
        self.steps = [int(t) for t in state["steps"]]
        self.lr, self.betas, self.eps = state["lr"], tuple(state["betas"]), state["eps"]
        self.weight_decay = state["weight_decay"]
        for target, source in zip(self.exp_avg + self.exp_avg_sq, list(state["exp_avg"]) + list(state["exp_avg_sq"])):
            np.copyto(target, source)


def clip_grad_norm_(params, max_norm):
    """Scale all gradients together so that their global L2 norm is at most max_norm.

    total = sqrt(sum over parameters of ||g||^2); if total > max_norm every g is multiplied by
    max_norm / (total + 1e-6) (torch's formula: the 1e-6 guards a zero norm). Returns total,
    the norm before clipping.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    per_tensor = np.array([np.linalg.norm(g.reshape(-1)) for g in grads])  # in the gradients' dtype
    total = float(np.linalg.norm(per_tensor))
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for g in grads:
            g *= scale
    return total
