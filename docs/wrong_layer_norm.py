"""A layer norm with a classic mistake in its backward, for the walkthrough and for check_op:

    python -m minigpt_np.check_op layer_norm docs/wrong_layer_norm.py:layer_norm

The backward forgets term 3, the part of the gradient that flows through r = 1 / sqrt(var + eps):
it treats the row's spread as a constant. The forward and the gradients of weight and bias are right.
"""
import numpy as np

from minigpt_np import Tensor


def layer_norm(x, weight, bias, eps=1e-5):
    a = x.data
    mean = a.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((a - mean) ** 2).mean(axis=-1, keepdims=True) + eps)
    xhat = (a - mean) * rstd
    out = xhat * weight.data + bias.data

    def backward(grad):
        C = a.shape[-1]
        grad_xhat = grad * weight.data
        grad_x = rstd * (grad_xhat - grad_xhat.mean(axis=-1, keepdims=True))  # term 3 is missing
        return grad_x, (grad * xhat).reshape(-1, C).sum(axis=0), grad.reshape(-1, C).sum(axis=0)

    return Tensor.from_op(out, (x, weight, bias), backward, "my_layer_norm")
