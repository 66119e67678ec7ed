"""Modules in the style of torch.nn, holding parameters under torch's names.

A module's parameters are found by walking its attributes in the order they were set, so the
names and their order are the ones torch's ``state_dict()`` gives for the same model
(``transformer.layers.0.self_attn.in_proj_weight`` and so on).

Initialisation follows torch's defaults: Linear weights and biases uniform in +-1/sqrt(fan_in),
Embedding N(0, 1), LayerNorm ones and zeros, the packed attention projection Xavier-uniform with a
zero bias, the attention output bias zero.

Every module that computes takes ``ops``: the module of ops it calls, ``functional`` (the plain
forms) or ``fast`` (their twins). ``kernels(name)`` gives the one of that name; anything else with
the functions of ``KERNEL_OPS`` works too (for example your own layer norm beside the plain rest).
"""
import math
from collections import OrderedDict
from types import SimpleNamespace

import numpy as np

from . import fast, functional
from .autograd import Tensor

KERNEL_OPS = ("embedding", "linear", "layer_norm", "attention", "gelu", "dropout")  # what the model calls
KERNELS = {"plain": functional, "fast": fast}


def kernels(name):
    """The ops of the form called ``name`` ("plain" or "fast"), or a ValueError that says what exists."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernels {name!r}; choose one of {', '.join(KERNELS)}")
    return KERNELS[name]


def mixed_kernels(base, **replacements):
    """The ops of ``base`` with some replaced, e.g. ``mixed_kernels(fast, layer_norm=my_layer_norm)``."""
    unknown = sorted(set(replacements) - set(KERNEL_OPS))
    if unknown:
        raise ValueError(f"not ops of the model: {unknown}; the model calls {', '.join(KERNEL_OPS)}")
    return SimpleNamespace(**{op: replacements.get(op, getattr(base, op)) for op in KERNEL_OPS})


class Parameter(Tensor):
    """A leaf tensor that requires a gradient: what the optimizer updates."""

    def __init__(self, data):
        super().__init__(data, requires_grad=True, op="parameter")


class Module:
    def __init__(self):
        self.training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    def _children(self):
        for name, value in vars(self).items():
            if isinstance(value, (Parameter, Module)):
                yield name, value

    def named_parameters(self, prefix=""):
        for name, value in self._children():
            if isinstance(value, Parameter):
                yield prefix + name, value
            else:
                yield from value.named_parameters(prefix + name + ".")

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def modules(self):
        yield self
        for _, value in self._children():
            if isinstance(value, Module):
                yield from value.modules()

    def num_parameters(self):
        return sum(p.data.size for p in self.parameters())

    def state_dict(self):
        """name -> a copy of the parameter's numpy array, in torch's key order."""
        return OrderedDict((name, p.data.copy()) for name, p in self.named_parameters())

    def load_state_dict(self, state_dict, strict=True):
        """Copy arrays (numpy, or anything np.asarray accepts, such as CPU torch tensors) into the
        parameters of the same name. Values are cast to the parameter's dtype; shapes must match.

        strict: every parameter must be given and no other key may appear.
        Returns (missing_keys, unexpected_keys) like torch.
        """
        own = dict(self.named_parameters())
        missing = [name for name in own if name not in state_dict]
        unexpected = [name for name in state_dict if name not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for name, param in own.items():
            if name not in state_dict:
                continue
            value = np.asarray(state_dict[name])
            if value.shape != param.data.shape:
                raise ValueError(
                    f"load_state_dict: {name} has shape {value.shape}, the model expects {param.data.shape}"
                )
            np.copyto(param.data, value, casting="unsafe")
        return missing, unexpected

    def train(self, mode=True):
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()


class ModuleList(Module):
    """Modules named by their index: ``layers.0``, ``layers.1``, ..."""

    def __init__(self, modules):
        super().__init__()
        self._items = list(modules)

    def _children(self):
        for index, module in enumerate(self._items):
            yield str(index), module

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def __getitem__(self, index):
        return self._items[index]


def _uniform(rng, bound, shape, dtype):
    return rng.uniform(-bound, bound, size=shape).astype(dtype)


class Linear(Module):
    """out = x @ weight^T + bias; weight (out_features, in_features)."""

    def __init__(self, in_features, out_features, bias=True, *, rng, dtype, ops=functional):
        super().__init__()
        self.ops = ops
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(_uniform(rng, bound, (out_features, in_features), dtype))
        self.bias = Parameter(_uniform(rng, bound, (out_features,), dtype)) if bias else None

    def forward(self, x):
        return self.ops.linear(x, self.weight, self.bias)


class Embedding(Module):
    def __init__(self, num_embeddings, embedding_dim, *, rng, dtype, ops=functional):
        super().__init__()
        self.ops = ops
        self.weight = Parameter(rng.standard_normal((num_embeddings, embedding_dim)).astype(dtype))

    def forward(self, ids):
        return self.ops.embedding(ids, self.weight)


class LayerNorm(Module):
    def __init__(self, dim, eps=1e-5, *, dtype, ops=functional):
        super().__init__()
        self.ops = ops
        self.eps = eps
        self.weight = Parameter(np.ones(dim, dtype=dtype))
        self.bias = Parameter(np.zeros(dim, dtype=dtype))

    def forward(self, x):
        return self.ops.layer_norm(x, self.weight, self.bias, self.eps)


class Dropout(Module):
    """Inverted dropout with probability p, active only in training mode; masks come from rng."""

    def __init__(self, p, *, rng, ops=functional):
        super().__init__()
        self.ops = ops
        self.p = p
        self.rng = rng

    def forward(self, x):
        return self.ops.dropout(x, self.p, self.training, self.rng)


class MultiheadAttention(Module):
    """Causal self-attention with torch's parameter layout: a packed ``in_proj_weight`` (3C, C),
    ``in_proj_bias`` (3C,) and an ``out_proj`` Linear(C, C). Dropout acts on the attention weights.

    in_proj_weight stacks W_q, W_k and W_v, so one product gives q, k and v side by side:

        qkv = x W_in^T + b_in      (B, T, C) -> (B, T, 3C)
        heads = attention(qkv)     (B, T, 3C) -> (B, T, C)   split, scores, mask, softmax, sum, merge
        out = heads W_out^T + b_out
    """

    def __init__(self, d_model, n_heads, dropout, *, rng, dropout_rng, dtype, ops=functional):
        super().__init__()
        self.ops = ops
        self.n_heads = n_heads
        self.dropout = dropout
        self.dropout_rng = dropout_rng
        xavier_bound = math.sqrt(6.0 / (d_model + 3 * d_model))
        self.in_proj_weight = Parameter(_uniform(rng, xavier_bound, (3 * d_model, d_model), dtype))
        self.in_proj_bias = Parameter(np.zeros(3 * d_model, dtype=dtype))
        self.out_proj = Linear(d_model, d_model, rng=rng, dtype=dtype, ops=ops)
        self.out_proj.bias.data[:] = 0.0

    def forward(self, x, last=None):
        """last: the outputs of the last ``last`` positions only, (B, last, C) (keys and values from all)."""
        qkv = self.ops.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, C) -> (B, T, 3C)
        heads = self.ops.attention(qkv, self.n_heads, causal=True, dropout_p=self.dropout, training=self.training,
                                   rng=self.dropout_rng, last=last)  # -> (B, T or last, C)
        return self.out_proj(heads)


class TransformerEncoderLayer(Module):
    """Post-LayerNorm block, as torch.nn.TransformerEncoderLayer(norm_first=False, activation="gelu"):

        x = norm1(x + dropout1(self_attn(x)))
        x = norm2(x + dropout2(linear2(dropout(gelu(linear1(x))))))
    """

    def __init__(self, d_model, n_heads, d_ff, dropout, *, rng, dropout_rng, dtype, ops=functional):
        """rng draws the initial weights, dropout_rng the dropout masks of training."""
        super().__init__()
        self.ops = ops
        self.self_attn = MultiheadAttention(d_model, n_heads, dropout, rng=rng, dropout_rng=dropout_rng, dtype=dtype,
                                            ops=ops)
        self.linear1 = Linear(d_model, d_ff, rng=rng, dtype=dtype, ops=ops)
        self.dropout = Dropout(dropout, rng=dropout_rng, ops=ops)
        self.linear2 = Linear(d_ff, d_model, rng=rng, dtype=dtype, ops=ops)
        self.norm1 = LayerNorm(d_model, dtype=dtype, ops=ops)
        self.norm2 = LayerNorm(d_model, dtype=dtype, ops=ops)
        self.dropout1 = Dropout(dropout, rng=dropout_rng, ops=ops)
        self.dropout2 = Dropout(dropout, rng=dropout_rng, ops=ops)

    def forward(self, x, last=None):  # (B, T, C) -> (B, T, C), or (B, last, C)
        """last: the outputs of the last ``last`` positions only; every position still gives its key and value."""
        attended = self.self_attn(x, last)
        if last is not None:
            x = x[:, x.shape[1] - last:]  # the residual stream of those positions
        x = self.norm1(x + self.dropout1(attended))
        hidden = self.dropout(self.ops.gelu(self.linear1(x)))  # (B, T, C) -> (B, T, 4C)
        return self.norm2(x + self.dropout2(self.linear2(hidden)))


class TransformerEncoder(Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = ModuleList(layers)

    def forward(self, x, last=None):
        """last: only the last ``last`` positions' outputs, (B, last, C). The earlier layers still run
        at every position (the final layer's keys and values come from all); the final layer runs at those."""
        for index, layer in enumerate(self.layers):
            x = layer(x, last if index == len(self.layers) - 1 else None)
        return x
