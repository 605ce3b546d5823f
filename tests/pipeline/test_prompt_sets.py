import pytest

from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.prompt_sets import PromptSpec, load_prompts_file


def test_yaml_prompts_with_ids_and_decoding(tmp_path):
    path = tmp_path / "prompts.yaml"
    path.write_text("- id: short\n  text: In three words?\n  max_new_tokens: 8\n- Describe it in detail.\n")
    assert load_prompts_file(str(path)) == [
        PromptSpec("short", "In three words?", {"max_new_tokens": 8}),
        PromptSpec("p1", "Describe it in detail.", {}),
    ]


def test_text_file_one_prompt_per_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("What is it?\n\nWhat colour is it?\n")
    assert [p.text for p in load_prompts_file(str(path))] == ["What is it?", "What colour is it?"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "must hold a non-empty list"),
        ('[{"text": "a", "id": "x"}, {"text": "b", "id": "x"}]', r"repeated: \['x'\]"),
        ('[{"text": "a", "max_new_tokens": 0}]', "max_new_tokens: 0 is out of range"),
        ('[{"text": "a", "beams": 4}]', r"unknown key\(s\) \['beams'\]"),
        ('[{"text": ""}]', "'text' must be a non-empty string"),
        ('[{"text": "a", "id": "has space"}]', "id 'has space' must be"),
    ],
)
def test_bad_prompt_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "prompts.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_prompts_file(str(path))
