"""Security rules: no shell, no remote code unless asked, models that cannot load refused before any data."""

import json
import re
import shutil
from pathlib import Path

import pytest

from llava_batch.cli.main import main
from llava_batch.jobs.caption import CaptionConfig
from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.families import check_model_loadable, inspect_model
from tests.support.images import write_images

ROOT = Path(__file__).resolve().parents[2]
SHELL_CALLS = re.compile(
    r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput|subprocess\.getstatusoutput"
)


def test_no_source_file_passes_strings_to_a_shell():
    offenders = []
    for folder in ("pipeline", "jobs", "operators", "benchmarks", "training"):
        for path in (ROOT / folder).rglob("*.py"):
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if SHELL_CALLS.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_shell_check_can_fail():
    assert SHELL_CALLS.search("subprocess.run(command, shell=True)")
    assert SHELL_CALLS.search("os.system('ls ' + name)")


def test_remote_code_is_off_unless_asked():
    assert CaptionConfig(input="/a", output="/b", model="m").trust_remote_code is False


def test_a_checkpoint_with_custom_code_is_refused_without_the_flag(tmp_path):
    model = tmp_path / "custom"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps({"model_type": "my_llava", "auto_map": {"AutoConfig": "configuration_my_llava.MyConfig"}})
    )
    (model / "configuration_my_llava.py").write_text("raise SystemExit('remote code ran')\n")
    with pytest.raises(ConfigError, match="trust-remote-code"):
        inspect_model(str(model))


def test_a_model_whose_weights_are_broken_fails_before_any_data_is_read(tmp_path, tiny_models, capsys):
    model = tmp_path / "broken"
    shutil.copytree(tiny_models["llava"], model)
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ConfigError, match="model.safetensors' is unreadable"):
        check_model_loadable(inspect_model(str(model)))
    folder = tmp_path / "in"
    write_images(folder, 1)
    assert (
        main(["caption", "--input", str(folder), "--output", str(tmp_path / "out"), "--model", str(model)])
        == 2
    )
    assert "is unreadable" in capsys.readouterr().err
    assert not (tmp_path / "out").exists(), "nothing may be written when the model cannot load"


def test_a_model_without_weights_is_refused(tmp_path, tiny_models):
    model = tmp_path / "no-weights"
    shutil.copytree(tiny_models["llava"], model)
    (model / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=r"no weight files \(\*.safetensors, \*.bin\)"):
        check_model_loadable(inspect_model(str(model)))
