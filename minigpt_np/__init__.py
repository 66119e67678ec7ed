"""minigpt_np: TinyGPT in pure numpy, with a hand-written reverse-mode autograd.

Read in this order (docs/walkthrough.md is the guide): autograd (Tensor and backward), functional (every
op in its plain form), nn (modules with torch's names), model (TinyGPT), optim (AdamW, clipping); then
fast (the ops' fast twins) and gradcheck (check a backward). The training pipeline is in ``train/``.
"""
from . import fast, functional, gradcheck, nn, optim
from .autograd import Tensor, no_grad
from .config import GPTConfig
from .model import TinyGPT

__all__ = ["GPTConfig", "TinyGPT", "Tensor", "no_grad", "functional", "fast", "gradcheck", "nn", "optim"]
