"""TinyGPT in numpy: the same parameters, names and computation as minigpt_torch.TinyGPT.

    ids (B, T) --token_embed + pos_embed--> (B, T, C) --n_layers x encoder layer--> (B, T, C)
        --ln_f--> (B, T, C) --lm_head--> logits (B, T, V)

Every encoder layer attends causally: position t sees positions 0..t only.
"""
import numpy as np

from .config import GPTConfig
from .nn import Embedding, LayerNorm, Linear, Module, TransformerEncoder, TransformerEncoderLayer, kernels as kernels_named


class TinyGPT(Module):
    def __init__(self, config: GPTConfig, seed=None, kernels="fast"):
        """seed: initialises the weights and, separately, the dropout masks of training.

        kernels: the form of the ops the model runs: "fast" (``fast.py``, for training) or "plain"
        (``functional.py``, the reading text), or your own object with the functions of
        ``nn.KERNEL_OPS`` (see ``nn.mixed_kernels``). The weights do not depend on it, and it is not
        part of the config: a checkpoint made with one form loads into the other.
        """
        super().__init__()
        self.config = config
        self.kernels = kernels
        ops = kernels_named(kernels) if isinstance(kernels, str) else kernels
        init_rng, dropout_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        self._dropout_rng = dropout_rng
        dtype = config.np_dtype
        C = config.d_model
        self.token_embed = Embedding(config.vocab_size, C, rng=init_rng, dtype=dtype, ops=ops)
        self.pos_embed = Embedding(config.context_length, C, rng=init_rng, dtype=dtype, ops=ops)
        layers = [
            TransformerEncoderLayer(C, config.n_heads, config.d_ff, config.dropout,
                                    rng=init_rng, dropout_rng=dropout_rng, dtype=dtype, ops=ops)
            for _ in range(config.n_layers)
        ]
        # torch.nn.TransformerEncoder deep-copies one layer n_layers times, so every layer starts
        # from the same weights; we do the same.
        first = layers[0].state_dict()
        for layer in layers[1:]:
            layer.load_state_dict(first)
        self.transformer = TransformerEncoder(layers)
        self.ln_f = LayerNorm(C, dtype=dtype, ops=ops)
        self.lm_head = Linear(C, config.vocab_size, bias=False, rng=init_rng, dtype=dtype, ops=ops)
        for name, parameter in self.named_parameters():
            parameter.name = name  # shown by autograd.graph

    def seed_dropout(self, seed):
        """Restart the dropout masks' random stream (all dropout layers share one generator)."""
        self._dropout_rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state

    def forward(self, ids, last=None):
        """ids: integer array (B, T) with T <= context_length. Returns logits, a Tensor (B, T, V).

        last: the logits of the last ``last`` positions only, (B, last, V): the same numbers as
        ``forward(ids)[:, -last:]``, for less work (the final layer, ln_f and lm_head run at those
        positions only). Sampling needs the last position; a loss on a few positions needs those.
        """
        return self.lm_head(self.hidden(ids, last))  # (B, T or last, C) -> (B, T or last, V)

    def hidden(self, ids, last=None):
        """The body's output before lm_head, ln_f of the last layer: a Tensor (B, T, C), or (B, last, C)."""
        ids = check_ids(ids, self.config)
        T = ids.shape[1]
        last = check_last(last, T)
        x = self.token_embed(ids) + self.pos_embed(np.arange(T))  # (B, T, C) + (T, C) -> (B, T, C)
        x = self.transformer(x, last)  # -> (B, T, C), or (B, last, C)
        return self.ln_f(x)


class RewardModel(TinyGPT):
    """A reward model: TinyGPT's body with a scalar head in place of lm_head, read at a text's end.

        ids (B, T) --TinyGPT's body and ln_f--> (B, T, C) --the position ends[b] of row b--> (B, C)
            --reward_head--> (B, 1) --> rewards (B,)

    Its parameters are TinyGPT's without lm_head, under the same names (an SFT checkpoint's weights
    load into it), and ``reward_head.weight`` (1, C), ``reward_head.bias`` (1,), both starting at 0:
    at first every text gets reward 0.
    """

    def __init__(self, config: GPTConfig, seed=None, kernels="fast"):
        super().__init__(config, seed, kernels)
        del self.lm_head
        ops = kernels_named(kernels) if isinstance(kernels, str) else kernels
        self.reward_head = Linear(config.d_model, 1, rng=np.random.default_rng(0), dtype=config.np_dtype, ops=ops)
        for parameter in (self.reward_head.weight, self.reward_head.bias):
            parameter.data[...] = 0.0
        for name, parameter in self.named_parameters():
            parameter.name = name

    def forward(self, ids, ends):
        """ids (B, T) as for TinyGPT, each row a text padded on the right; ends (B,): the position of each
        text's last character (causal attention: the padding after it changes nothing there).
        Returns the rewards, a Tensor (B,)."""
        ids = check_ids(ids, self.config)
        ends = check_ends(ends, ids.shape)
        at_end = self.hidden(ids)[np.arange(ids.shape[0]), ends]  # (B, T, C) -> (B, C)
        return self.reward_head(at_end).reshape(-1)  # (B, C) -> (B, 1) -> (B,)


def check_last(last, T):
    """The number of final positions to compute: None for all T (also when last >= T), or a ValueError."""
    if last is None:
        return None
    if isinstance(last, bool) or not isinstance(last, (int, np.integer)) or last < 1:
        raise ValueError(f"last must be a positive number of positions, got {last!r}")
    return None if last >= T else int(last)


def check_ends(ends, shape):
    """ends as an integer array (B,), one position in 0..T-1 per row of ids of shape (B, T), or a ValueError."""
    ends = np.asarray(ends)
    if ends.shape != shape[:1] or ends.size and (ends.dtype.kind not in "iu" or ends.min() < 0
                                                 or ends.max() >= shape[1]):
        raise ValueError(f"ends must be one integer position in 0..{shape[1] - 1} per row of the "
                         f"{shape[0]} rows, got {ends!r}")
    return ends


def check_ids(ids, config):
    """The ids as an integer array (B, T), or a ValueError that says what is wrong with them."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise ValueError(f"token ids must have shape (batch, time), got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise ValueError(f"token ids must be integers, got dtype {ids.dtype}")
    if not 1 <= ids.shape[1] <= config.context_length:
        raise ValueError(f"sequence length {ids.shape[1]} is outside 1..context_length ({config.context_length})")
    if ids.size and (ids.min() < 0 or ids.max() >= config.vocab_size):
        raise ValueError(f"token ids must lie in 0..{config.vocab_size - 1}, got {ids.min()}..{ids.max()}")
    return ids
