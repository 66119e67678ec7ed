"""minigpt_np: TinyGPT in pure numpy, with a hand-written reverse-mode autograd."""
from . import functional, nn, optim
from .autograd import Tensor, no_grad
from .config import GPTConfig
from .model import TinyGPT

__all__ = ["GPTConfig", "TinyGPT", "Tensor", "no_grad", "functional", "nn", "optim"]
