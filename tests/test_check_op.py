"""check_op: a learner's op checked in one command; a wrong backward is pointed at the wrong input."""
import subprocess
import sys
from pathlib import Path

import pytest

from minigpt_np import fast
from minigpt_np import functional as plain
from minigpt_np.check_op import OPS, check

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, "-m", "minigpt_np.check_op", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


def test_a_backward_without_term_3_is_pointed_at_input_x():
    result = run("layer_norm", "docs/wrong_layer_norm.py:layer_norm")
    assert result.returncode == 1, result.stdout + result.stderr
    verdict = result.stdout.strip().splitlines()[-1]
    assert verdict.startswith("wrong gradient: d/d x ") and "3 of 3 cases" in verdict, verdict
    assert "FAIL d/d x" in result.stdout and "FAIL d/d weight" not in result.stdout
    assert "FAIL output" not in result.stdout  # the forward is right


def test_a_wrong_weight_gradient_is_pointed_at_weight(tmp_path):
    source = (ROOT / "docs" / "wrong_layer_norm.py").read_text()
    source = source.replace("rstd * (grad_xhat - grad_xhat.mean(axis=-1, keepdims=True))  # term 3 is missing",
                            "rstd * (grad_xhat - grad_xhat.mean(axis=-1, keepdims=True)"
                            " - xhat * (grad_xhat * xhat).mean(axis=-1, keepdims=True))")
    source = source.replace("(grad * xhat).reshape(-1, C).sum(axis=0)", "(grad * xhat).reshape(-1, C).mean(axis=0)")
    (tmp_path / "ops.py").write_text(source)
    result = run("layer_norm", f"{tmp_path / 'ops.py'}:layer_norm")
    assert result.returncode == 1
    lines = result.stdout.strip().splitlines()
    assert lines[-1].startswith("wrong gradient: d/d weight "), lines[-1]
    assert not any(line.startswith("wrong gradient: d/d x") for line in lines)


def test_a_wrong_forward_is_reported_as_the_output(tmp_path):
    (tmp_path / "ops.py").write_text(
        "from minigpt_np import Tensor\n"
        "def gelu(x):\n"
        "    return Tensor.from_op(x.data * 0.5, (x,), lambda g: (g * 0.5,), 'half')\n")
    result = run("gelu", f"{tmp_path / 'ops.py'}:gelu")
    assert result.returncode == 1
    assert "wrong output: the forward differs from the plain gelu in 3 of 3 cases" in result.stdout


@pytest.mark.parametrize("op", sorted(OPS))
def test_the_plain_ops_and_their_fast_twins_pass(op):
    assert check(op, getattr(plain, op), out=open("/dev/null", "w")) == {}
    if hasattr(fast, op):
        assert check(op, getattr(fast, op), out=open("/dev/null", "w")) == {}


def test_the_module_form_and_a_passing_run_exit_0():
    result = run("attention", "minigpt_np.fast:attention")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("all checks passed")


@pytest.mark.parametrize("args, message", [
    (["layernorm", "docs/wrong_layer_norm.py:layer_norm"], "error: op: unknown op 'layernorm'; choose one of"),
    (["layer_norm", "nowhere.py:layer_norm"], "error: nowhere.py: no such file"),
    (["layer_norm", "docs/wrong_layer_norm.py:norm"], "error: docs/wrong_layer_norm.py has no function 'norm'"),
    (["layer_norm", "docs/wrong_layer_norm.py"], "is not FILE.py:FUNCTION or MODULE:FUNCTION"),
])
def test_usage_errors_are_one_line_and_exit_2(args, message):
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr, result.stderr
