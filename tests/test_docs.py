"""The README's promises that a test can hold it to."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s+```bash\n(.*?)```", text, re.S)
    assert block, "README has no Quick start code block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_two_lines_and_ci_runs_the_second():
    lines = quick_start()
    assert len(lines) == 2
    ci = (ROOT / ".ci" / "run").read_text()
    assert lines[1] in ci.splitlines()


def test_readme_figures_exist():
    text = (ROOT / "README.md").read_text()
    for path in re.findall(r"\]\((docs/[^)]+\.png)\)", text):
        assert (ROOT / path).is_file(), path


def test_every_command_is_in_the_readme_table():
    from vaelab.app.cli import COMMANDS

    text = (ROOT / "README.md").read_text()
    for name, _ in COMMANDS.items():
        assert f"`vaelab {name}" in text, name
