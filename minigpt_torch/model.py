"""The reference TinyGPT in PyTorch, built on nn.TransformerEncoder exactly like the original.

Its ``state_dict`` keys are the reference names that minigpt_np's TinyGPT mirrors.
"""
import numpy as np
import torch
from torch import nn

from minigpt_np.config import GPTConfig
from minigpt_np.model import check_ends, check_ids, check_last

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TinyGPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        C = config.d_model
        self.token_embed = nn.Embedding(config.vocab_size, C)
        self.pos_embed = nn.Embedding(config.context_length, C)
        layer = nn.TransformerEncoderLayer(
            C, config.n_heads, dim_feedforward=config.d_ff, dropout=config.dropout,
            batch_first=True, activation="gelu",
        )
        self.transformer = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
        self.to(TORCH_DTYPES[config.dtype])
        self.compiled_logits = None

    def compile_training_forward(self, **options):
        """Run the whole-sequence forward passes that record a graph (the pretraining and SFT steps)
        through torch.compile. Those without a graph (sampling, evaluation) and the RL update's
        (``last`` positions only, new shapes at every step) stay eager."""
        self.compiled_logits = torch.compile(self.logits, **options)

    def forward(self, ids, last=None):
        """ids: integer tensor (B, T), T <= context_length. Returns logits (B, T, V).

        last: the logits of the last ``last`` positions only, (B, last, V), with the final encoder
        layer run at those positions (``final_layer_at_last_positions``); the earlier layers run as usual.
        """
        if not isinstance(ids, torch.Tensor):  # checked here, on the host, before the copy to the device
            ids = to_device(check_ids(ids, self.config), self.lm_head.weight.device)
        else:
            check_ids(ids.detach().cpu().numpy(), self.config)
        last = check_last(last, ids.shape[1])
        if self.compiled_logits is not None and last is None and torch.is_grad_enabled():
            return self.compiled_logits(ids, last)
        return self.logits(ids, last)

    def logits(self, ids, last):
        """forward's computation, on an ids tensor that was checked."""
        return self.lm_head(self.hidden(ids, last))  # (B, T or last, C) -> (B, T or last, V)

    def hidden(self, ids, last=None):
        """The body's output before lm_head (ln_f of the last layer), (B, T, C) or (B, last, C)."""
        T = ids.shape[1]
        positions = torch.arange(T, device=ids.device)
        x = self.token_embed(ids) + self.pos_embed(positions)  # (B, T, C)
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=ids.device, dtype=x.dtype)
        if last is None:
            x = self.transformer(x, mask=mask, is_causal=True)
        else:
            *earlier, final = self.transformer.layers
            for layer in earlier:
                x = layer(x, src_mask=mask, is_causal=True)
            x = final_layer_at_last_positions(final, x, mask[T - last:])  # (B, last, C)
        return self.ln_f(x)


class RewardModel(TinyGPT):
    """minigpt_np.model.RewardModel in torch: TinyGPT's body, a scalar head read at each text's end."""

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        del self.lm_head
        self.reward_head = nn.Linear(config.d_model, 1).to(TORCH_DTYPES[config.dtype])
        nn.init.zeros_(self.reward_head.weight)
        nn.init.zeros_(self.reward_head.bias)

    def forward(self, ids, ends):
        """ids (B, T) padded on the right, ends (B,) each text's last position; returns rewards (B,)."""
        device = self.reward_head.weight.device
        ids = check_ids(ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else ids, self.config)
        ends = torch.as_tensor(check_ends(ends, ids.shape), device=device)
        ids = to_device(ids, device)
        at_end = self.hidden(ids)[torch.arange(ids.shape[0], device=device), ends]  # (B, T, C) -> (B, C)
        return self.reward_head(at_end).reshape(-1)  # (B, C) -> (B, 1) -> (B,)


def to_device(array, device):
    """A numpy array as a tensor on device. To a GPU it is copied from page-locked ("pinned") memory
    without waiting: a copy from ordinary memory would first wait for the GPU to finish all its work."""
    array = np.asarray(array)
    tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def final_layer_at_last_positions(layer, x, mask):
    """What ``layer`` (an nn.TransformerEncoderLayer with norm_first=False) computes at the last
    mask.shape[0] positions of x, every position serving as key and value; mask: those positions'
    rows of the causal mask. The same steps as the layer's own forward, with fewer queries."""
    query = x[:, x.shape[1] - mask.shape[0]:]  # (B, last, C)
    attended = layer.self_attn(query, x, x, attn_mask=mask, need_weights=False)[0]
    x = layer.norm1(query + layer.dropout1(attended))
    return layer.norm2(x + layer.dropout2(layer.linear2(layer.dropout(layer.activation(layer.linear1(x))))))


def numpy_state_dict(model):
    """The model's weights as numpy arrays under the reference names (bit-exact copies)."""
    return {name: value.detach().cpu().numpy().copy() for name, value in model.state_dict().items()}


def load_numpy_state_dict(model, state_dict, strict=True):
    """Load numpy arrays (e.g. minigpt_np's state_dict()) into the torch model, bit-exactly."""
    reference = model.state_dict()
    tensors = {
        name: torch.from_numpy(value).to(dtype=reference[name].dtype) if name in reference else torch.from_numpy(value)
        for name, value in state_dict.items()
    }
    return model.load_state_dict(tensors, strict=strict)
