"""The walkthrough cannot go stale: pytest runs its code blocks as doctests (setup.cfg: --doctest-glob),
and every code block must be one that runs."""
import re
from pathlib import Path

import pytest


DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("page, least", [("walkthrough.md", 10), ("methods.md", 6)])
def test_every_code_block_of_the_walkthrough_is_a_doctest(page, least):
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= least
    for block in blocks:
        assert block.lstrip().startswith(">>> "), f"a code block that would not run:\n{block}"
    assert "```" not in re.sub(r"```python\n.*?```", "", text, flags=re.S), "a code block that is not python"


@pytest.mark.parametrize("page", ["walkthrough.md", "methods.md"])
def test_the_walkthrough_names_functions_that_exist(page):
    import importlib
    text = (DOCS / page).read_text()
    modules = {name: f"minigpt_np.{name}" for name in ("functional", "fast", "optim", "autograd")}
    modules.update({name: f"minigpt_np.train.{name}" for name in ("rl", "data", "stages")})
    found = set(re.findall(r"`(?:train/)?(functional|fast|optim|autograd|rl|data|stages)\.(\w+)", text))
    assert found
    for module, name in found:
        if name not in ("py", "md"):  # a file, as in `fast.py` or `rl.md`
            assert hasattr(importlib.import_module(modules[module]), name), f"{module}.{name}"


def test_every_link_and_every_file_named_in_the_readme_and_the_docs_exists():
    root = DOCS.parent
    for page in [root / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: link to {target}, which is not there"
        for path in re.findall(r"`((?:minigpt_np|minigpt_torch|examples|docs|tests|parity_tests)/[\w./-]+)`", text):
            assert (root / path.split("::")[0]).exists(), f"{page.name}: names {path}, which is not there"


def test_the_speed_page_tables_are_what_bench_writes_from_its_json(capsys):
    """docs/speed.md's figures are bench.py's own output (--markdown) for the JSON beside it, not typed in."""
    from tests.conftest import load_cli
    text = (DOCS / "speed.md").read_text()
    found = re.search(r"<!-- bench.py --markdown (\S+): begin -->\n(.*)\n<!-- bench.py --markdown \1: end -->",
                      text, re.S)
    assert found, "docs/speed.md has no generated block"
    load_cli("bench").main(["--markdown", str(DOCS.parent / found.group(1))])
    assert found.group(2).strip() == capsys.readouterr().out.strip()
