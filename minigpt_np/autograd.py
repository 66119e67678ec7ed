"""A small reverse-mode autograd on numpy arrays.

Every operation builds its output ``Tensor`` and attaches one backward closure. The closure gets
the gradient of the final scalar with respect to the output (``grad``, same shape as the output)
and returns the gradients with respect to each parent, in the order of ``parents``.

``Tensor.backward()`` visits the graph in reverse topological order, so a node's gradient is
complete (summed over all its uses) before its closure runs. Leaves that require a gradient
(the parameters) *accumulate* into ``.grad``, as in PyTorch: call ``zero_grad()`` between steps.

The elementary operations (arithmetic, matmul, reshape, indexing, reductions) live here as
methods; the neural-network operations live in ``functional.py``. Every tensor records the op that
made it (``t.op``); ``graph(t)`` prints the graph that ``t.backward()`` will walk.
"""
import sys
from contextlib import contextmanager

import numpy as np

_grad_enabled = True


@contextmanager
def no_grad():
    """Within this block operations record no graph (for sampling and evaluation)."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


def is_grad_enabled():
    return _grad_enabled


def unbroadcast(grad, shape):
    """Sum ``grad`` down to ``shape``: the backward of numpy broadcasting.

    A broadcast input was used once for every position it was stretched over, so its gradient is
    the sum over those positions: leading axes that were added, and axes of size 1 that grew.
    """
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


class Tensor:
    """A numpy array with a gradient and the recipe to compute it.

    data: the numpy array. grad: a numpy array of the same shape, or None until backward() fills it
    (only for tensors created with ``requires_grad=True``: the leaves, i.e. parameters).
    op: the name of the operation that made it ("leaf" for one made directly); name: an optional
    label (a model's parameters carry their state_dict names).
    """

    def __init__(self, data, requires_grad=False, parents=(), backward_fn=None, op="leaf", name=None):
        self.data = data if isinstance(data, np.ndarray) else np.asarray(data)
        self.grad = None
        self.requires_grad = requires_grad
        self.op = op
        self.name = name
        self._parents = parents
        self._backward_fn = backward_fn

    @classmethod
    def from_op(cls, data, parents, backward_fn, op):
        """The output of operation ``op``: it tracks a gradient iff some parent does (and grad is on)."""
        if _grad_enabled and any(p.requires_grad for p in parents):
            return cls(data, requires_grad=True, parents=parents, backward_fn=backward_fn, op=op)
        return cls(data, op=op)

    # ---------------------------------------------------------------- basics
    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return self.data.dtype

    @property
    def ndim(self):
        return self.data.ndim

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        name = f", name={self.name!r}" if self.name else ""
        return f"Tensor(op={self.op}{name}, shape={self.shape}, dtype={self.dtype}, requires_grad={self.requires_grad})"

    def numpy(self):
        return self.data

    def item(self):
        return self.data.item()

    def detach(self):
        return Tensor(self.data)

    def zero_grad(self):
        self.grad = None

    # ---------------------------------------------------------------- backward
    def _topological_order(self):
        """Nodes that lead to self, each after all of its parents (iterative depth-first search)."""
        order, visited = [], set()
        stack = [(self, False)]
        while stack:
            node, parents_done = stack.pop()
            if parents_done:
                order.append(node)
                continue
            if id(node) in visited:
                continue
            visited.add(id(node))
            stack.append((node, True))
            for parent in node._parents:
                if parent.requires_grad and id(parent) not in visited:
                    stack.append((parent, False))
        return order

    def backward(self, grad=None):
        """Fill ``.grad`` of every leaf that requires a gradient with d(self)/d(leaf).

        grad: the gradient flowing into self; may be omitted for a scalar (it is then 1).
        Leaf gradients accumulate (``+=``) across calls, like PyTorch's.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad")
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a scalar, got shape {self.shape}")
            grad = np.ones_like(self.data)
        grad = np.asarray(grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"gradient shape {grad.shape} does not match tensor shape {self.shape}")

        pending = {id(self): grad}  # node id -> gradient summed so far
        for node in reversed(self._topological_order()):
            node_grad = pending.pop(id(node), None)
            if node_grad is None:
                continue
            if node._backward_fn is None:  # a leaf: keep the gradient
                node.grad = node_grad.copy() if node.grad is None else node.grad + node_grad
                continue
            for parent, parent_grad in zip(node._parents, node._backward_fn(node_grad)):
                if parent_grad is None or not parent.requires_grad:
                    continue
                key = id(parent)
                pending[key] = parent_grad if key not in pending else pending[key] + parent_grad

    # ---------------------------------------------------------------- arithmetic
    def __add__(self, other):
        """out = a + b (broadcasting). d a = unbroadcast(g), d b = unbroadcast(g)."""
        other = as_tensor(other, self.dtype)
        a_shape, b_shape = self.shape, other.shape

        a_needs, b_needs = self.requires_grad, other.requires_grad  # a constant gets no gradient

        def backward(grad):
            return (unbroadcast(grad, a_shape) if a_needs else None,
                    unbroadcast(grad, b_shape) if b_needs else None)

        return Tensor.from_op(self.data + other.data, (self, other), backward, "add")

    __radd__ = __add__

    def __neg__(self):
        return self * -1.0

    def __sub__(self, other):
        return self + (-as_tensor(other, self.dtype))

    def __rsub__(self, other):
        return as_tensor(other, self.dtype) + (-self)

    def __mul__(self, other):
        """out = a * b (broadcasting). d a = unbroadcast(g * b), d b = unbroadcast(g * a)."""
        other = as_tensor(other, self.dtype)
        a, b = self.data, other.data

        a_needs, b_needs = self.requires_grad, other.requires_grad

        def backward(grad):
            return (unbroadcast(grad * b, a.shape) if a_needs else None,
                    unbroadcast(grad * a, b.shape) if b_needs else None)

        return Tensor.from_op(a * b, (self, other), backward, "mul")

    __rmul__ = __mul__

    def __truediv__(self, other):
        """out = a / b (broadcasting). d a = unbroadcast(g / b), d b = unbroadcast(-g * a / b^2)."""
        other = as_tensor(other, self.dtype)
        a, b = self.data, other.data
        a_needs, b_needs = self.requires_grad, other.requires_grad

        def backward(grad):
            return (unbroadcast(grad / b, a.shape) if a_needs else None,
                    unbroadcast(-grad * a / (b * b), b.shape) if b_needs else None)

        return Tensor.from_op(a / b, (self, other), backward, "div")

    def __rtruediv__(self, other):
        return as_tensor(other, self.dtype) / self

    def __matmul__(self, other):
        """out = a @ b over the last two axes, batch axes broadcast.

        d a = g @ b^T, d b = a^T @ g (each summed over broadcast batch axes).
        """
        other = as_tensor(other, self.dtype)
        a, b = self.data, other.data
        if a.ndim < 2 or b.ndim < 2:
            raise ValueError(f"matmul needs tensors of 2 or more axes, got {a.shape} and {b.shape}")

        def backward(grad):
            grad_a = grad @ np.swapaxes(b, -1, -2)
            grad_b = np.swapaxes(a, -1, -2) @ grad
            return unbroadcast(grad_a, a.shape), unbroadcast(grad_b, b.shape)

        return Tensor.from_op(a @ b, (self, other), backward, "matmul")

    def exp(self):
        """out = exp(a); d a = g * out."""
        out = np.exp(self.data)
        return Tensor.from_op(out, (self,), lambda grad: (grad * out,), "exp")

    def log(self):
        """out = log(a); d a = g / a."""
        a = self.data
        return Tensor.from_op(np.log(a), (self,), lambda grad: (grad / a,), "log")

    # ---------------------------------------------------------------- shape
    def reshape(self, *shape):
        """Same numbers, new shape; the gradient is reshaped back."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        in_shape = self.shape
        return Tensor.from_op(self.data.reshape(shape), (self,), lambda grad: (grad.reshape(in_shape),), "reshape")

    def transpose(self, *axes):
        """Permute axes (all of them, like numpy's transpose); the gradient is permuted back."""
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        axes = axes or tuple(reversed(range(self.ndim)))
        inverse = tuple(np.argsort(axes))
        return Tensor.from_op(self.data.transpose(axes), (self,), lambda grad: (grad.transpose(inverse),), "transpose")

    def __getitem__(self, index):
        """out = a[index]. d a is zero except where the index read, where g is added.

        Integers and slices read each element at most once, so g can simply be written in place;
        an index array may read one element twice, and ``np.add.at`` then adds instead of overwriting.
        """
        if isinstance(index, Tensor):
            index = index.data
        a = self.data
        parts = index if isinstance(index, tuple) else (index,)
        basic = all(isinstance(part, (int, np.integer, slice)) or part is None or part is Ellipsis for part in parts)

        def backward(grad):
            grad_a = np.zeros_like(a)
            if basic:
                grad_a[index] = grad
            else:
                np.add.at(grad_a, index, grad)
            return (grad_a,)

        return Tensor.from_op(a[index], (self,), backward, "index")

    # ---------------------------------------------------------------- reductions
    def sum(self, axis=None, keepdims=False):
        """out = sum of a over axis; d a = g broadcast back over the summed axes."""
        a_shape = self.shape

        def backward(grad):
            if axis is not None and not keepdims:
                grad = np.expand_dims(grad, axis)
            return (np.broadcast_to(grad, a_shape).copy(),)

        return Tensor.from_op(np.asarray(self.data.sum(axis=axis, keepdims=keepdims)), (self,), backward, "sum")

    def mean(self, axis=None, keepdims=False):
        """out = sum / count; d a = g / count broadcast back."""
        count = self.data.size if axis is None else np.prod([self.shape[i] for i in np.atleast_1d(axis)])
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / float(count))


def as_tensor(value, dtype=None):
    """A Tensor as it is, or a constant Tensor (no gradient) holding a number or array."""
    if isinstance(value, Tensor):
        return value
    return Tensor(np.asarray(value, dtype=dtype), op="constant")


def graph(tensor, file=None):
    """Print the graph behind ``tensor`` top-down, in the order ``tensor.backward()`` visits it: one node
    a line, numbered, with its op, shape, dtype and the numbers of its parents that carry a gradient
    (``+ n constant`` counts the others). Leaves show their name when they have one (parameters do)."""
    file = file or sys.stdout
    order = list(reversed(tensor._topological_order())) if tensor.requires_grad else [tensor]
    number = {id(node): index for index, node in enumerate(order)}
    labels = [node.op + (f" {node.name}" if node.name else "") for node in order]
    width = max(len(label) for label in labels)
    for index, (node, label) in enumerate(zip(order, labels)):
        tracked = [f"#{number[id(p)]}" for p in node._parents if id(p) in number]
        constants = len(node._parents) - len(tracked)
        inputs = ", ".join(tracked) + (f"{' + ' if tracked else ''}{constants} constant" if constants else "")
        arrow = f"  <- {inputs}" if inputs else ""
        print(f"#{index:<4} {label:<{width}}  {str(node.shape):<14} {node.dtype}{arrow}", file=file)
