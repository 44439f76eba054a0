"""The README's Python snippets run as written (so the API tour stays true).

Snippets run in order in one namespace: a later one continues the tour of an earlier one."""
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_an_api_tour():
    assert SNIPPETS


def test_the_snippets_run_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets may write files
    namespace = {"__name__": "__readme__"}
    for i, code in enumerate(SNIPPETS):
        exec(compile(code, f"{README} (snippet {i})", "exec"), namespace)
