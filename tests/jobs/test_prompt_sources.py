"""Conversation and raw-prompt columns end to end with the trained `models/llava`, whose true captions are known.

One Parquet table, two caption runs: `--conversation-column` (string-content messages: the row's images go first
in the first user turn) and `--raw-prompt-column` from a YAML file (LLaVA prompts as the model docs write them,
used verbatim). The same rows give the same captions both ways, and those captions are the true ones.
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from llava_batch.cli.main import main
from llava_batch.training.oracle import llava_answers_after_history, png_bytes
from llava_batch.training.shapes import samples
from tests.support.cli_output import one_error_line

pytestmark = pytest.mark.integration

# models/llava: 48x48 crops in 8x8 patches -> 36 image tokens per image.
IMAGE_TOKENS = 36
QUESTION = "What is in the image?"
DOCS_PROMPT = f"USER: <image>\n{QUESTION} ASSISTANT:"


def write_table(folder):
    """Rows (uid -> conversation, raw prompt, images); `answer` is the true caption where one is known."""
    shots = samples("llava", "heldout", 5, seed=0)
    wrong_answer = "a blue circle on the right"  # the earlier turn must not decide the answer: the image does
    rows = {
        "single": (
            [{"role": "user", "content": shots[0].prompt}],
            f"USER: <image>\n{shots[0].prompt} ASSISTANT:",
            [shots[0]],
        ),
        "multi_turn": (
            [
                {"role": "user", "content": "What do you see?"},
                {"role": "assistant", "content": wrong_answer},
                {"role": "user", "content": QUESTION},
            ],
            f"USER: <image>\nWhat do you see? ASSISTANT: {wrong_answer}</s>USER: {QUESTION} ASSISTANT:",
            [shots[4]],
        ),
        # Two images, one placeholder: fine as a conversation (both go first), an error as a raw prompt.
        "two_images": ([{"role": "user", "content": QUESTION}], DOCS_PROMPT, [shots[2], shots[3]]),
        # The model docs' prompt string given as a conversation: an error that names --raw-prompt-column.
        "docs_prompt": (DOCS_PROMPT, DOCS_PROMPT, [shots[3]]),
    }
    table = pa.table(
        {
            "uid": list(rows),
            "images": [[png_bytes(shot.images[0]) for shot in shots_] for _, _, shots_ in rows.values()],
            "conv": [conv if isinstance(conv, str) else json.dumps(conv) for conv, _, _ in rows.values()],
            "raw": [raw for _, raw, _ in rows.values()],
        }
    )
    folder.mkdir(parents=True)
    pq.write_table(table, folder / "rows.parquet")
    assert shots[0].answer == "a red square in the center" and shots[4].answer == "a green star on the left"
    return {uid: shots_[0].answer for uid, (_, _, shots_) in rows.items() if len(shots_) == 1}


def run(argv):
    assert main(argv) == 0
    return {row["id"]: row for row in pq.read_table(argv[argv.index("--output") + 1]).to_pylist()}


@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_conversation_and_raw_prompt_columns_caption_correctly(tmp_path):
    answers = write_table(tmp_path / "in")
    common = ["--model", "builtin:llava", "--id-column", "uid", "--image-column", "images"]
    common += ["--max-new-tokens", "16", "--max-error-rate", "0.5"]
    as_conversation = run(
        ["caption", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "conv"), *common]
        + ["--conversation-column", "conv"]
    )
    job = tmp_path / "raw.yaml"
    job.write_text(yaml.safe_dump({"job": "caption", "raw_prompt_column": "raw"}))
    as_raw = run(
        ["caption", "--config", str(job), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "raw")]
        + common
    )
    ids = ["docs_prompt", "multi_turn", "single", "two_images"]
    assert sorted(as_conversation) == sorted(as_raw) == ids  # none lost, none twice

    # Conversation run: string content gets the row's images first, in the first user turn.
    for uid in ("single", "multi_turn"):
        assert as_conversation[uid]["error"] is None
    assert as_conversation["single"]["generated_text"] == answers["single"]
    # After an earlier exchange the checkpoint names the colour and shape of the image (not of the earlier answer);
    # measured: "a green star", for "a green star on the left".
    assert as_conversation["multi_turn"]["generated_text"] in llava_answers_after_history(
        answers["multi_turn"]
    )
    assert as_conversation["multi_turn"]["prompt"] == QUESTION
    assert as_conversation["two_images"]["error"] is None
    assert (
        as_conversation["two_images"]["num_input_tokens"]
        == as_raw["docs_prompt"]["num_input_tokens"] + IMAGE_TOKENS
    )
    assert as_conversation["docs_prompt"]["error"] == (
        "prompt: conversation column 'conv' holds a rendered prompt, not JSON messages (Expecting value: line 1 "
        "column 1 (char 0)); use --raw-prompt-column conv to send it to the model verbatim"
    )

    # Raw run: the docs' prompt strings verbatim, the same tokens and captions as the rendered conversations.
    for uid in ("single", "multi_turn", "docs_prompt"):
        assert as_raw[uid]["error"] is None
    for uid in ("single", "docs_prompt"):
        assert as_raw[uid]["generated_text"] == answers[uid]
    for uid in ("single", "multi_turn"):
        assert as_raw[uid]["num_input_tokens"] == as_conversation[uid]["num_input_tokens"]
        assert as_raw[uid]["generated_text"] == as_conversation[uid]["generated_text"]
    assert as_raw["docs_prompt"]["prompt"] == DOCS_PROMPT
    assert as_raw["two_images"]["error"] == (
        "preprocess: the raw prompt has 1 <image> placeholder(s) but the row has 2 image(s)"
    )


@pytest.mark.parametrize(
    ("flags", "line"),
    [
        (
            ["--raw-prompt-column", "raw", "--prompt-column", "q"],
            "llava-batch: error: raw_prompt_column: cannot be combined with prompt_column; "
            "choose one source of prompts",
        ),
        (
            ["--raw-prompt-column", " "],
            "llava-batch: error: raw_prompt_column: ' ' must name an input column",
        ),
    ],
)
def test_a_second_prompt_source_fails_before_ray_starts(tmp_path, capsys, flags, line, own_ray):
    import ray

    argv = ["caption", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    assert main(argv + ["--model", "builtin:llava", *flags]) == 2
    assert one_error_line(capsys) == line
    assert not ray.is_initialized()
