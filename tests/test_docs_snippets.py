"""The ```python blocks of README.md and MODEL_CARD.md run as written, from the repository root.

A block that cannot run here (a fragment, long training, a server) carries `<!-- no-test: reason -->` on the line
right before its fence; it is skipped with that reason, so every skip is visible in the markdown and in pytest.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "MODEL_CARD.md")
NO_TEST = re.compile(r"^<!-- no-test: (?P<reason>\S.*?) -->$")


def python_blocks(text: str) -> list[tuple[int, str, str | None]]:
    """(line of the fence, code, no-test reason or None) for every ```python block."""
    lines, blocks, index = text.splitlines(), [], 0
    while index < len(lines):
        if lines[index].strip() == "```python":
            start = index
            end = lines.index("```", start + 1)
            marker = NO_TEST.match(lines[start - 1].strip()) if start > 0 else None
            blocks.append((start + 1, "\n".join(lines[start + 1 : end]) + "\n", marker and marker["reason"]))
            index = end
        index += 1
    return blocks


SNIPPETS = [
    pytest.param(code, reason, id=f"{name}:{line}")
    for name in DOCUMENTS
    for line, code, reason in python_blocks((REPO / name).read_text(encoding="utf-8"))
]


@pytest.mark.parametrize("code, no_test_reason", SNIPPETS)
def test_markdown_python_block_runs_as_written(code, no_test_reason):
    if no_test_reason:
        pytest.skip(f"marked no-test: {no_test_reason}")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"snippet failed:\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"


def test_every_no_test_marker_sits_right_before_a_python_block():
    for name in DOCUMENTS:
        lines = (REPO / name).read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines):
            if line.lstrip().startswith("<!--") and "no-test" in line:
                assert NO_TEST.match(line.strip()), f"{name}:{number + 1}: write <!-- no-test: reason -->"
                assert lines[number + 1].strip() == "```python", f"{name}:{number + 1}: marker not before a block"


def test_the_documents_have_runnable_python_blocks():
    runnable = [param for param in SNIPPETS if not param.values[1]]
    assert len(runnable) >= 3  # README's Use and Patches examples, the model card's
