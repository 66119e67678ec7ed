"""The walkthrough cannot go stale: pytest runs its code blocks as doctests (setup.cfg: --doctest-glob),
and every code block must be one that runs."""
import re
from pathlib import Path


DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_every_code_block_of_the_walkthrough_is_a_doctest():
    text = (DOCS / "walkthrough.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 10
    for block in blocks:
        assert block.lstrip().startswith(">>> "), f"a code block that would not run:\n{block}"
    assert "```" not in re.sub(r"```python\n.*?```", "", text, flags=re.S), "a code block that is not python"


def test_the_walkthrough_names_functions_that_exist():
    import importlib
    text = (DOCS / "walkthrough.md").read_text()
    for module, name in set(re.findall(r"`(functional|fast|optim|autograd)\.(\w+)", text)):
        if name != "py":  # the file itself, as in `fast.py`
            assert hasattr(importlib.import_module(f"minigpt_np.{module}"), name), f"{module}.{name}"


def test_every_link_and_every_file_named_in_the_readme_and_the_docs_exists():
    root = DOCS.parent
    for page in [root / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = page.read_text()
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name}: link to {target}, which is not there"
        for path in re.findall(r"`((?:minigpt_np|minigpt_torch|examples|docs|tests|parity_tests)/[\w./-]+)`", text):
            assert (root / path.split("::")[0]).exists(), f"{page.name}: names {path}, which is not there"
