"""Hypothesis profiles for the whole suite, and a replay command on every red test.

- "fixed" (the default): every machine draws the same examples (derandomize), so a run is reproducible and a
  red test is red everywhere its rounding is the same.
- "explore": new draws from a seed (``--hypothesis-seed=N``; one is picked and shown when not given), to
  look past the fixed examples: ``python -m pytest -m hypothesis --hypothesis-profile=explore``.

A failing test's report ends with the one command that reruns it (its example is printed above it by
hypothesis, with a ``@reproduce_failure`` blob that replays it exactly).
"""
import random
import shlex

import pytest
from hypothesis import settings

settings.register_profile("fixed", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile("fixed")  # --hypothesis-profile, read after this file, replaces it


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    if config.getoption("hypothesis_profile") == "explore" and config.getoption("hypothesis_seed") is None:
        config.option.hypothesis_seed = str(random.SystemRandom().randrange(2**32))


def pytest_report_header(config):
    seed = config.getoption("hypothesis_seed")
    return f"minigpt: hypothesis profile {settings.get_current_profile_name()!r}" + (f", seed {seed}" if seed else "")


def replay_command(config, nodeid):
    words = ["python", "-m", "pytest", nodeid]
    if settings.get_current_profile_name() != "fixed":
        words.append(f"--hypothesis-profile={settings.get_current_profile_name()}")
    if config.getoption("hypothesis_seed") is not None:
        words.append(f"--hypothesis-seed={config.getoption('hypothesis_seed')}")
    return shlex.join(words)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.append(("replay", f"rerun this test alone: {replay_command(item.config, item.nodeid)}"))
