"""The numpy package stands alone: nothing in minigpt_np imports torch, and its own tests pass without it."""
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


BLOCKED_PYTEST = """
import sys
sys.modules["torch"] = None  # as if torch were not installed
import pytest
sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "tests/test_kernels.py", "tests/test_autograd.py"]))
"""


def test_plain_and_fast_forms_are_proven_equal_without_torch():
    """The twin tests and the engine's own tests, run where any 'import torch' fails."""
    root = __file__.rsplit("/tests/", 1)[0]
    result = subprocess.run([sys.executable, "-c", BLOCKED_PYTEST], capture_output=True, text=True, timeout=600,
                            cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
