"""Every shipped example config opens with the command that runs it and loads without errors."""

from pathlib import Path

import pytest

from jobs.instruct import InstructConfig
from pipeline.config import CaptionConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "jobs" / "configs").glob("*.yaml"))
CONFIG_CLASSES = {"caption": CaptionConfig, "instruct": InstructConfig}


def test_there_are_example_configs():
    assert len(CONFIGS) >= 2
    assert {path.name.split("_", 1)[0] for path in CONFIGS} == set(CONFIG_CLASSES)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.name)
def test_config_opens_with_its_command_and_validates(path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# Run: llava-batch ")
    assert f"--config jobs/configs/{path.name}" in first_line
    command = first_line.split()[3]
    assert path.name.startswith(f"{command}_"), "name a config after the command that runs it"
    config = load_config(CONFIG_CLASSES[command], path, {})
    assert config.model and config.input and config.output
