"""The torch side of the Backend interface (see minigpt_np/train/backend.py for the contract).

Under torchrun (``WORLD_SIZE`` > 1 in the environment) the backend is one rank of a data-parallel run
on torch.distributed: gloo on the CPU, NCCL on GPUs (one GPU per rank, ``LOCAL_RANK``). The model it
trains is wrapped in DistributedDataParallel, which sums the ranks' gradients during backward; the
stages build every loss as this rank's share of the global batch's loss, with the global batch's
normalisers, so the summed gradient is the one-process gradient of the global batch.
"""
import contextlib
import os

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as TF
from torch.nn.parallel import DistributedDataParallel

from minigpt_np.train.backend import IGNORE, Backend, keep_freed_memory
from minigpt_np.model import RewardModel as NumpyRewardModel, TinyGPT as NumpyTinyGPT

from .model import RewardModel, TinyGPT, load_numpy_state_dict, numpy_state_dict, to_device


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device="cpu", compile=False):
        """compile: run the training steps' forward (and so their backward) through torch.compile."""
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise ValueError(f"unknown device {device!r}; choose cpu or cuda")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {device} was asked for, but PyTorch sees no CUDA GPU on this machine")
        keep_freed_memory()  # as for numpy: torch's CPU tensors come from the same C allocator
        self.device, self.compile = device, compile
        if launched():
            self._join_ranks()

    def _join_ranks(self):
        if self.device.startswith("cuda"):
            self.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"  # one GPU per rank
            torch.cuda.set_device(self.device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.startswith("cuda") else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def create_model(self, config, seed):
        model = TinyGPT(config)
        load_numpy_state_dict(model, NumpyTinyGPT(config, seed=seed).state_dict())
        model = model.to(self.device)
        if self.compile:
            model.compile_training_forward()
        if self.world_size == 1:
            return model
        # every rank builds the same initial weights (DDP checks their shapes and copies rank 0's)
        return DistributedDataParallel(model, device_ids=[self.device] if self.device.startswith("cuda") else None)

    # ------------------------------------------------------------------ data parallelism
    def all_sum(self, values):
        values = np.asarray(values, dtype=np.float64)
        if self.world_size == 1:
            return values
        tensor = torch.as_tensor(values.copy(), device="cpu" if dist.get_backend() == "gloo" else self.device)
        dist.all_reduce(tensor)
        return tensor.cpu().numpy().reshape(values.shape)

    def all_gather(self, items):
        if self.world_size == 1:
            return list(items)
        gathered = [None] * self.world_size
        dist.all_gather_object(gathered, list(items))
        return [item for part in gathered for item in part]

    def gradient_sync(self, model, sync):
        if self.world_size == 1 or sync:
            return contextlib.nullcontext()
        return model.no_sync()

    def create_optimizer(self, model, lr, weight_decay):
        # fused: the whole update in one kernel per device and dtype (on a GPU, instead of several
        # launches per parameter); the same AdamW: the whole-pipeline parity test (both backends'
        # create_optimizer) and the resume test cover it.
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)

    def set_training(self, model, training):
        model.train(training)

    def seed_dropout(self, model, seed):
        if self.world_size > 1:  # each rank its own masks, from (seed, rank): reproducible for a given world size
            seed = int(np.random.SeedSequence([seed, self.rank]).generate_state(1, np.uint64)[0])
        torch.manual_seed(seed)

    def _tensor(self, array):
        return to_device(array, self.device)

    def forward(self, model, ids, last=None):
        return model(np.asarray(ids), last)  # the model checks the ids on the host, then copies them

    def weighted_nll(self, logits, targets, weights, temperature=1.0, top_k=None):
        if temperature != 1.0:
            logits = logits / temperature
        if top_k is not None and top_k < logits.shape[-1]:
            kth_largest = torch.topk(logits.detach(), top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits.detach() < kth_largest, -torch.inf)
        V = logits.shape[-1]
        nll = TF.cross_entropy(logits.reshape(-1, V), self._tensor(targets).reshape(-1),
                               ignore_index=IGNORE, reduction="none")
        weights = self._tensor(np.asarray(weights, dtype=np.float64)).to(logits.dtype).reshape(-1)
        return (nll * weights).sum()

    def kl_entropy(self, logits, reference_logits, kl_weights, entropy_weights):
        log_p = torch.log_softmax(logits, dim=-1)
        p = log_p.exp()
        entropy = -(p * log_p).sum(dim=-1)
        loss = -(entropy * self._tensor(entropy_weights).to(logits.dtype)).sum()
        if reference_logits is not None:
            log_q = torch.log_softmax(self._tensor(reference_logits).to(logits.dtype), dim=-1)
            kl = (p * (log_p - log_q)).sum(dim=-1)
            loss = loss + (kl * self._tensor(kl_weights).to(logits.dtype)).sum()
        return loss

    def create_reward_model(self, config, seed):
        model = RewardModel(config)
        load_numpy_state_dict(model, NumpyRewardModel(config, seed=seed).state_dict())
        model = model.to(self.device)
        if self.world_size == 1:
            return model
        return DistributedDataParallel(model, device_ids=[self.device] if self.device.startswith("cuda") else None)

    def rewards(self, model, ids, ends):
        return model(np.asarray(ids), np.asarray(ends))

    def predict_rewards(self, model, ids, ends):
        with torch.no_grad():
            return model(np.asarray(ids), np.asarray(ends)).cpu().numpy()

    def preference_loss(self, chosen, rejected, weight):
        return TF.logsigmoid(chosen - rejected).sum() * -float(weight)

    def backward(self, loss):
        # DDP averages the ranks' gradients; the loss is this rank's share of a sum, so x world_size
        # turns the average into the sum (exact: world_size is a small integer).
        (loss * self.world_size if self.world_size > 1 else loss).backward()
        return float(loss.detach())

    def optimizer_step(self, model, optimizer, loss, max_grad_norm):
        if loss is not None:
            optimizer.zero_grad(set_to_none=True)
            (loss * self.world_size if self.world_size > 1 else loss).backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return norm.detach()  # a tensor on the device: read later, with the others

    def predict(self, model, ids, last=None):
        with torch.no_grad():
            return _module(model)(np.asarray(ids), last).cpu().numpy()

    def loss_value(self, loss):
        value = loss.detach()
        if self.world_size > 1:  # the global loss: the sum of the ranks' shares
            value = value.clone()
            dist.all_reduce(value)
        return value

    def read(self, values):
        tensors = [value.detach().reshape(()).to(torch.float64) for value in values if isinstance(value, torch.Tensor)]
        numbers = iter(torch.stack(tensors).cpu().tolist() if tensors else [])  # one copy to the host
        return [next(numbers) if isinstance(value, torch.Tensor) else float(value) for value in values]

    def numpy(self, logits):
        return logits.detach().cpu().numpy()

    def state_dict(self, model):
        return numpy_state_dict(_module(model))

    def load_state_dict(self, model, state):
        load_numpy_state_dict(_module(model), state, strict=True)

    def optimizer_state(self, model, optimizer):
        arrays, steps = {}, {}
        for name, param in _module(model).named_parameters():
            state = optimizer.state.get(param, {})
            if not state:
                arrays[f"exp_avg.{name}"] = np.zeros(tuple(param.shape), dtype=param.detach().cpu().numpy().dtype)
                arrays[f"exp_avg_sq.{name}"] = arrays[f"exp_avg.{name}"].copy()
                steps[f"steps.{name}"] = 0
                continue
            arrays[f"exp_avg.{name}"] = state["exp_avg"].detach().cpu().numpy().copy()
            arrays[f"exp_avg_sq.{name}"] = state["exp_avg_sq"].detach().cpu().numpy().copy()
            steps[f"steps.{name}"] = int(state["step"])
        return arrays, steps

    def load_optimizer_state(self, model, optimizer, arrays, steps):
        for name, param in _module(model).named_parameters():
            step = int(steps[f"steps.{name}"])
            if step == 0:
                continue
            optimizer.state[param] = {
                "step": torch.tensor(float(step), dtype=torch.float32, device=param.device),  # fused: on the device
                "exp_avg": torch.as_tensor(arrays[f"exp_avg.{name}"], device=param.device).to(param.dtype).clone(),
                "exp_avg_sq": torch.as_tensor(arrays[f"exp_avg_sq.{name}"], device=param.device).to(param.dtype).clone(),
            }


def launched():
    """True in a process that torchrun started as one of several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _module(model):
    """The TinyGPT inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model
