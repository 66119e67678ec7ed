"""minigpt_torch: the PyTorch reference TinyGPT (nn.TransformerEncoder), for real CPU and GPU training."""
from minigpt_np.config import GPTConfig

from .model import TinyGPT, load_numpy_state_dict, numpy_state_dict

__all__ = ["GPTConfig", "TinyGPT", "numpy_state_dict", "load_numpy_state_dict"]
