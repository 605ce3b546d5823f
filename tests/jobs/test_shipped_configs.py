"""Every shipped example config opens with the command that runs it and loads without errors."""

from pathlib import Path

import pytest

from pipeline.config import CaptionConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs").glob("*.yaml"))


def test_there_are_example_configs():
    assert len(CONFIGS) >= 2


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_opens_with_its_command_and_validates(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# Run: llava-batch ")
    assert f"--config jobs/configs/{path.name}" in first_line
    config = load_config(CaptionConfig, path, {})
    assert config.model and config.input and config.output
