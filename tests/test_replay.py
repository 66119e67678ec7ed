"""A red hypothesis test prints the one command that reruns it, and that command draws the same example."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAILING = '''
from hypothesis import given, settings, strategies as st

@settings(max_examples=200, deadline=None)
@given(x=st.integers(0, 10**6), y=st.integers(0, 10**6))
def test_red(x, y):
    assert (x + y) % 7 != 3
'''


def run(folder, *args):
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=folder,
                            capture_output=True, text=True)
    assert result.returncode == 1, result.stdout[-2000:]
    replay = re.search(r"rerun this test alone: (.*)", result.stdout)
    example = re.search(r"Failing test case: test_red\([\sE]*x=(\d+),[\sE]*y=(\d+)", result.stdout)
    assert replay and example, result.stdout[-2000:]
    return replay.group(1).split(), example.groups()


@pytest.mark.parametrize("profile", [[], ["--hypothesis-profile=explore"]], ids=["fixed", "explore"])
def test_a_red_test_names_the_command_that_replays_its_example(tmp_path, profile):
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_red.py").write_text(FAILING)
    command, example = run(tmp_path, "test_red.py", *profile)
    assert command[:4] == ["python", "-m", "pytest", "test_red.py::test_red"]
    if profile:  # new draws: the command carries the profile and the seed that was picked
        assert "--hypothesis-profile=explore" in command and any(w.startswith("--hypothesis-seed=") for w in command)
    replayed_command, replayed_example = run(tmp_path, *command[3:])
    assert replayed_example == example and replayed_command == command
