"""The model configuration, shared by both backends."""
from dataclasses import asdict, dataclass

import numpy as np

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class GPTConfig:
    """Shape and numeric type of a TinyGPT.

    The defaults are the original TinyGPT's. ``vocab_size`` has no default: it comes from the
    character vocabulary of the data. ``dtype`` is chosen here, once, and every parameter and
    every intermediate array of the model has it.
    """

    vocab_size: int
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    context_length: int = 64
    dropout: float = 0.1
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "context_length"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"GPTConfig.d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"GPTConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")

    @property
    def np_dtype(self):
        return np.dtype(self.dtype)

    @property
    def d_ff(self):
        """Width of the feed-forward layer: 4 * d_model, as in the original."""
        return 4 * self.d_model

    def to_dict(self):
        return asdict(self)
