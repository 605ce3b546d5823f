import time

import pytest

from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.families import family_of, inspect_model


@pytest.mark.parametrize("family", ["llava", "llava_next", "vipllava", "llava_interleave"])
def test_family_is_read_from_the_checkpoint_config(tiny_models, family):
    info = inspect_model(str(tiny_models[family]))
    assert info.family == family
    if family == "llava_interleave":
        assert (info.model_type, info.text_model_type, info.vision_model_type) == (
            "llava",
            "qwen2",
            "siglip_vision_model",
        )


def test_unknown_model_type_names_the_supported_ones():
    with pytest.raises(
        ConfigError, match="model_type 'idefics2' is not a LLaVA family.*llava, llava_next, vipllava"
    ):
        family_of("idefics2", "mistral")


def test_hub_id_without_network_fails_fast(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"could not be fetched from the Hugging Face Hub \(no network"):
        inspect_model("llava-hf/llava-1.5-7b-hf")
    assert time.monotonic() - started < 10


def test_hub_id_with_offline_mode_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set"):
        inspect_model("llava-hf/llava-1.5-7b-hf")


def test_directory_without_config_is_not_a_model(tmp_path):
    with pytest.raises(ConfigError, match="no config.json there"):
        inspect_model(str(tmp_path))
