"""The README's three commands are the ones CI runs."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S).group(1)
    return [line for line in first_block.splitlines() if line.strip() and not line.startswith("#")]


def test_first_block_has_install_demo_and_test():
    install, demo, test = readme_commands()
    assert install.startswith("pip install") and "constraints.txt" in install
    assert demo == "mixmask demo"
    assert test.startswith("pytest")


def test_ci_runs_the_readme_install_and_test_commands():
    install, _, test = readme_commands()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert install in ci_lines
    assert test in ci_lines
