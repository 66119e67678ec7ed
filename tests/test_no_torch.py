"""The numpy package stands alone: nothing in minigpt_np imports torch."""
import subprocess
import sys

SCRIPT = """
import sys
sys.modules["torch"] = None  # any 'import torch' now raises ImportError
import numpy as np
import minigpt_np, minigpt_np.train.pipeline, minigpt_np.train.rl, minigpt_np.train.report
from minigpt_np.train.backend import get_backend
backend = get_backend("numpy")
model = backend.create_model(minigpt_np.GPTConfig(vocab_size=5, d_model=8, n_heads=2, context_length=4), 0)
print(backend.predict(model, np.zeros((1, 3), dtype=int)).shape)
try:
    get_backend("torch")
except ValueError as error:
    print("error:", error)
"""


def test_minigpt_np_imports_and_runs_without_torch():
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(1, 3, 5)" in result.stdout
    assert "error: the torch backend needs a package that is not installed" in result.stdout
