"""The Backend interface: the seam between the training stages and a tensor library.

The stages (``stages.py``, ``rl.py``) are written once against these methods; ``NumpyBackend`` below and
``minigpt_torch.backend.TorchBackend`` implement them. Everything that crosses the seam is a numpy
array or a Python number, except the two opaque handles a stage passes back unchanged: the model's
``logits`` and the ``loss`` built from them.

One loss serves all three stages, a weighted negative log-likelihood of target tokens:

    loss = sum over positions of  weight * -log p(target | context)

with p the softmax of logits / temperature restricted to the top-k logits (the distribution the
sampler draws from). Pretraining weights every position 1/N (plain cross-entropy), SFT weights
answer tokens 1/(number of answer tokens) and instruction tokens 0, and REINFORCE weights each
sampled token by its advantage.
"""
import contextlib
import ctypes
import importlib
import os
import sys

import numpy as np

from .. import functional as F
from ..autograd import Tensor, no_grad
from ..model import RewardModel, TinyGPT
from ..nn import kernels as kernels_named
from ..optim import AdamW, clip_grad_norm_
from .data import IGNORE
from .sampling import top_k_mask


class Backend:
    name = "abstract"
    device = "cpu"
    # Data parallelism: under torchrun a backend is one of world_size processes ("ranks"); each computes
    # its share of every global batch, and these methods combine the shares. In one process (every
    # numpy run) the process is rank 0 of 1 and they hand back what they are given.
    rank = 0
    world_size = 1

    def share(self, n):
        """The rows of a global batch of n that this rank computes: a slice (contiguous, sizes differing
        by at most one; all n rows in one process)."""
        return slice(self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size)

    def all_sum(self, values):
        """A numpy array summed over the ranks: every rank gets the same sums."""
        return np.asarray(values, dtype=np.float64)

    def all_gather(self, items):
        """A list of every rank's items (any picklable objects), concatenated in rank order."""
        return list(items)

    def gradient_sync(self, model, sync):
        """A block around a forward and backward whose gradients are added to the parameters'. sync
        False: keep them on this rank (a piece of an accumulated step); sync True (the step's last
        piece): make every rank's gradient the sum over the ranks. Nothing to do in one process."""
        return contextlib.nullcontext()

    def create_model(self, config, seed):
        """A TinyGPT whose initial weights are minigpt_np's for this seed, on every backend."""
        raise NotImplementedError

    def create_optimizer(self, model, lr, weight_decay):
        raise NotImplementedError

    def set_training(self, model, training):
        """Training mode turns dropout on; evaluation mode turns it off."""
        raise NotImplementedError

    def seed_dropout(self, model, seed):
        """Restart the dropout random stream (so a resumed run draws the same masks)."""
        raise NotImplementedError

    def forward(self, model, ids, last=None):
        """Logits (B, T, V) of integer ids (B, T), recording the graph for a backward pass.
        last: only the last ``last`` positions' logits, (B, last, V), for less work (see TinyGPT.forward)."""
        raise NotImplementedError

    def weighted_nll(self, logits, targets, weights, temperature=1.0, top_k=None):
        """sum(weights * -log p(targets)) as a scalar loss; positions with target IGNORE must weigh 0."""
        raise NotImplementedError

    def kl_entropy(self, logits, reference_logits, kl_weights, entropy_weights):
        """sum(kl_weights * KL(p || q)) - sum(entropy_weights * H(p)) as a scalar loss, per position
        p = softmax(logits), q = softmax(reference_logits) (a numpy constant; None when all
        kl_weights are 0): KL = sum_v p_v (log p_v - log q_v), H = -sum_v p_v log p_v."""
        raise NotImplementedError

    def create_reward_model(self, config, seed):
        """A RewardModel (TinyGPT's body, a scalar head read at a text's end; minigpt_np.model) whose initial
        weights are minigpt_np's for this seed, on every backend."""
        raise NotImplementedError

    def rewards(self, model, ids, ends):
        """The reward model's rewards (B,) of right-padded texts ids (B, T) ending at ends (B,), recording
        the graph for a backward pass: a handle for ``preference_loss``."""
        raise NotImplementedError

    def predict_rewards(self, model, ids, ends):
        """The rewards as a numpy array (B,), without recording a graph."""
        raise NotImplementedError

    def preference_loss(self, chosen, rejected, weight):
        """The Bradley-Terry loss of preference pairs, weight * sum_i -log sigmoid(chosen_i - rejected_i),
        from two handles of ``rewards`` (row i of each is pair i)."""
        raise NotImplementedError

    def backward(self, loss):
        """Add the gradients of loss to the parameters' (accumulating, as for micro-batches) and
        free its graph. Returns the loss's value."""
        raise NotImplementedError

    def optimizer_step(self, model, optimizer, loss, max_grad_norm):
        """Backward from loss, clip the global gradient norm, step, clear grads. Returns the norm
        before clipping as a value handle for ``read``. loss None: the gradients were already
        accumulated with ``backward``."""
        raise NotImplementedError

    def predict(self, model, ids, last=None):
        """Logits as a numpy array, without recording a graph (evaluation and sampling); last as in forward."""
        raise NotImplementedError

    def loss_value(self, loss):
        """The loss's value as a handle for ``read``, without waiting for it (a GPU computes ahead)."""
        raise NotImplementedError

    def read(self, values):
        """The numbers behind value handles (from ``loss_value``, ``optimizer_step``, or plain numbers),
        as a list of floats, read all at once: on a GPU, one wait for the device instead of one each."""
        raise NotImplementedError

    def numpy(self, logits):
        """The values of a tensor the model returned, as a numpy array."""
        raise NotImplementedError

    def state_dict(self, model):
        """The weights as numpy arrays under the reference names."""
        raise NotImplementedError

    def load_state_dict(self, model, state):
        raise NotImplementedError

    def optimizer_state(self, model, optimizer):
        """AdamW's state by parameter name: ({"exp_avg.<name>": array, ...}, {"steps.<name>": int, ...})."""
        raise NotImplementedError

    def load_optimizer_state(self, model, optimizer, arrays, steps):
        raise NotImplementedError


def leave_ranks():
    """Under torchrun: close this rank's process group (opened by the torch backend) while the interpreter is
    whole. Left open, gloo's threads can abort the process at exit ("terminate called without an active
    exception"). Call it only where every rank stops together; a rank whose partner died just exits.
    Nothing to do in one process."""
    distributed = sys.modules.get("torch.distributed")  # imported by the torch backend only
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.barrier()  # no rank closes its connections while another still sends on them
        distributed.destroy_process_group()


def keep_freed_memory():
    """Let the C allocator keep large freed blocks for reuse (Linux with glibc; elsewhere nothing).

    Every op of the numpy engine returns a fresh array, and each training step frees them all. By
    default glibc hands blocks above a size threshold back to the operating system at once, so the
    next step's arrays arrive as new pages, each one faulted in and zeroed: a large share of a step.
    Raising the thresholds keeps those blocks in the process. The numbers do not change; the peak
    memory does not either (the blocks are reused, not added). Both backends call it (torch's CPU
    tensors come from the same allocator, and a speed comparison should give both the same one).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters in glibc's malloc.h
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20) and libc.mallopt(M_TRIM_THRESHOLD, 512 * 2**20))


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self, device="cpu", kernels="fast"):
        """kernels: the form of the model's ops, "fast" or "plain", or an object of ops (see TinyGPT)."""
        if device != "cpu":
            raise ValueError(f"the numpy backend runs on the CPU only, not on device {device!r}")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError(f"the numpy backend runs in one process, not as one of the {os.environ['WORLD_SIZE']} "
                             f"ranks of torchrun; use --backend torch, or run without torchrun")
        if isinstance(kernels, str):
            kernels_named(kernels)  # an unknown name fails here, before any work
        self.kernels = kernels
        keep_freed_memory()

    def create_model(self, config, seed):
        return TinyGPT(config, seed=seed, kernels=self.kernels)

    def create_optimizer(self, model, lr, weight_decay):
        return AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)

    def set_training(self, model, training):
        model.train(training)

    def seed_dropout(self, model, seed):
        model.seed_dropout(seed)

    def forward(self, model, ids, last=None):
        return model(ids, last)

    def weighted_nll(self, logits, targets, weights, temperature=1.0, top_k=None):
        if temperature != 1.0:
            logits = logits * (1.0 / temperature)
        if top_k is not None:
            logits = F.masked_fill(logits, top_k_mask(logits.data, top_k), -np.inf)
        nll = F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="none")  # (B, T)
        return (nll * Tensor(np.asarray(weights, dtype=nll.dtype))).sum()

    def kl_entropy(self, logits, reference_logits, kl_weights, entropy_weights):
        # The loss term, on the graph so it has a gradient; rl.kl_and_entropy computes the same
        # figures in float64 numpy from any backend's logits, for the logs.
        log_p = F.log_softmax(logits)  # (B, T, V)
        p = log_p.exp()
        entropy = -(p * log_p).sum(axis=-1)  # (B, T)
        loss = -(entropy * Tensor(np.asarray(entropy_weights, dtype=logits.dtype))).sum()
        if reference_logits is not None:
            log_q = F.log_softmax_array(np.asarray(reference_logits, dtype=logits.dtype))  # a constant
            kl = (p * (log_p - Tensor(log_q))).sum(axis=-1)  # (B, T)
            loss = loss + (kl * Tensor(np.asarray(kl_weights, dtype=logits.dtype))).sum()
        return loss

    def create_reward_model(self, config, seed):
        return RewardModel(config, seed=seed, kernels=self.kernels)

    def rewards(self, model, ids, ends):
        return model(ids, ends)

    def predict_rewards(self, model, ids, ends):
        with no_grad():
            return model(ids, ends).data.copy()

    def preference_loss(self, chosen, rejected, weight):
        return F.log_sigmoid(chosen - rejected).sum() * -float(weight)

    def backward(self, loss):
        loss.backward()
        return float(loss.item())

    def optimizer_step(self, model, optimizer, loss, max_grad_norm):
        if loss is not None:
            optimizer.zero_grad()
            loss.backward()
        norm = clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad()
        return norm

    def predict(self, model, ids, last=None):
        with no_grad():
            return model(ids, last).data

    def loss_value(self, loss):
        return float(loss.item())  # numpy computes at once: the value is already there

    def read(self, values):
        return [float(value) for value in values]

    def numpy(self, logits):
        return logits.data

    def state_dict(self, model):
        return model.state_dict()

    def load_state_dict(self, model, state):
        model.load_state_dict(state, strict=True)

    def optimizer_state(self, model, optimizer):
        names = [name for name, _ in model.named_parameters()]
        arrays, steps = {}, {}
        for name, m, v, t in zip(names, optimizer.exp_avg, optimizer.exp_avg_sq, optimizer.steps):
            arrays[f"exp_avg.{name}"], arrays[f"exp_avg_sq.{name}"] = m.copy(), v.copy()
            steps[f"steps.{name}"] = int(t)
        return arrays, steps

    def load_optimizer_state(self, model, optimizer, arrays, steps):
        for index, (name, _) in enumerate(model.named_parameters()):
            np.copyto(optimizer.exp_avg[index], arrays[f"exp_avg.{name}"])
            np.copyto(optimizer.exp_avg_sq[index], arrays[f"exp_avg_sq.{name}"])
            optimizer.steps[index] = int(steps[f"steps.{name}"])


# The backends by name, each as "module:class", imported only when asked for: minigpt_np never imports
# minigpt_torch (it must run where torch is not installed), and minigpt_torch imports this module.
BACKENDS = {"numpy": "minigpt_np.train.backend:NumpyBackend", "torch": "minigpt_torch.backend:TorchBackend"}


def check_backend_options(name, kernels=None, compile=False):
    """A ValueError unless ``name`` is a backend (a key of BACKENDS) that takes these options: kernels
    other than "fast" are the numpy backend's, compile is the torch backend's."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if kernels not in (None, "fast") and name != "numpy":
        raise ValueError(f"--kernels: {kernels} is for the numpy backend; the {name} backend has one form of its ops")
    if compile and name != "torch":
        raise ValueError(f"--compile: torch.compile is for the torch backend, not the {name} backend")


def get_backend(name, device="cpu", kernels=None, compile=False):
    """The backend called ``name`` (a key of BACKENDS), or a ValueError that says what exists.
    kernels: the numpy backend's op form ("fast", the default, or "plain"); other backends have one form.
    compile: the torch backend's torch.compile of the training steps."""
    check_backend_options(name, kernels, compile)
    module_name, class_name = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"the {name} backend needs a package that is not installed: {error} "
                         f"(for torch: pip install -e '.[torch]')") from None
    backend_class = getattr(module, class_name)
    if kernels is not None:
        return backend_class(device, kernels=kernels)
    return backend_class(device, compile=True) if compile else backend_class(device)
