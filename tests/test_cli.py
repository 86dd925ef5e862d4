import subprocess
import sys

import yaml

from mixmask import __version__
from mixmask.cli import main


def test_version_and_help_list_only_working_commands(capsys):
    result = subprocess.run([sys.executable, "-m", "mixmask.cli", "--version"], capture_output=True, text=True)
    assert result.stdout.strip() == f"mixmask {__version__}"
    assert main([]) == 0
    text = capsys.readouterr().out
    commands = ("config", "data", "pretrain", "finetune", "evaluate", "sweep", "report", "demo", "export")
    for command in commands:
        assert f"    {command} " in text
    for command in commands:  # every listed command imports and parses
        result = subprocess.run(
            [sys.executable, "-m", "mixmask.cli", command, "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr


def test_config_prints_resolved_config(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 3\n")
    assert main(["config", str(path), "optim.lr=0.01"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["epochs"] == 3 and printed["optim"]["lr"] == 0.01


def test_config_error_is_one_clear_line(capsys):
    assert main(["config", "masking.strategies.0.ratio=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mixmask: error: config field `masking.strategies[0].ratio`: got 2")
    assert "Traceback" not in err
