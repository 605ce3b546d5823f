"""The caption job on a folder of videos and an image (LLaVA-Interleave): one row per file, a video row shows the
model --video-frames frames in one turn, a truncated video is an error row. Videos are written by PyAV here."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import main
from llava_batch.operators.video import frame_targets
from tests.support.images import image_bytes

av = pytest.importorskip("av")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FPS, SECONDS, SIDE = 8, 2, 64


def moving_shapes_video(container_format: str, colour: tuple[int, int, int]) -> bytes:
    """A coloured square sliding right and a grey bar sliding down, on black, 2 s at 8 fps."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream("mpeg4", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = SIDE, SIDE, "yuv420p"
        for index in range(FPS * SECONDS):
            pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
            pixels[8:24, 3 * index : 3 * index + 16] = colour
            pixels[3 * index : 3 * index + 8, 40:56] = 160
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def test_video_files_in_an_image_folder_are_rows_of_n_frames(tmp_path, tiny_models):
    from llava_batch.operators.chat_template import render_prompt, user_turn
    from llava_batch.operators.preprocess import load_processor

    folder = tmp_path / "clips"
    folder.mkdir()
    red = moving_shapes_video("mp4", (255, 0, 0))
    (folder / "red.mp4").write_bytes(red)
    (folder / "green.MKV").write_bytes(moving_shapes_video("matroska", (0, 255, 0)))
    (folder / "cut.mp4").write_bytes(red[: len(red) // 2])  # the index (moov, at the end) is gone
    (folder / "still.png").write_bytes(image_bytes(0, (SIDE, SIDE), "PNG"))
    model = str(tiny_models["llava_interleave"])
    output = tmp_path / "out"
    argv = ["caption", "--input", str(folder), "--output", str(output), "--model", model]
    argv += [
        "--video-frames",
        "4",
        "--max-new-tokens",
        "2",
        "--max-error-rate",
        "0.5",
        "--prompt",
        "What moves?",
    ]
    assert main(argv) == 0

    rows = {row["id"]: row for row in pq.read_table(output).to_pylist()}
    assert sorted(rows) == ["cut.mp4", "green.MKV", "red.mp4", "still.png"]
    # What FFmpeg makes of a cut depends on where it falls (tests/operators/test_video.py has the cases).
    assert rows["cut.mp4"]["error"].startswith("decode: ")
    assert rows["cut.mp4"]["num_frames"] is None and rows["cut.mp4"]["generated_text"] is None
    still = rows["still.png"]
    assert still["error"] is None and still["num_frames"] is None and still["frame_timestamps"] is None

    # The frames on screen at the middle of four equal spans of 2 s: each at most one frame period before it.
    targets = frame_targets(SECONDS, 4)
    assert targets == [0.25, 0.75, 1.25, 1.75]
    processor = load_processor(model)
    image_processor = processor.image_processor
    # One image's tokens, as LlavaProcessor counts them: the patch grid, plus a CLS token that "default" drops.
    patches = (image_processor.size["height"] // processor.patch_size) * (
        image_processor.size["width"] // processor.patch_size
    )
    per_image = (
        patches
        + processor.num_additional_image_tokens
        - (processor.vision_feature_select_strategy == "default")
    )
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    prompt_ids = processor.tokenizer(render_prompt(processor, user_turn("What moves?", 4), None))["input_ids"]
    text_tokens = sum(token != image_token_id for token in prompt_ids)
    for name in ("red.mp4", "green.MKV"):
        row = rows[name]
        assert row["error"] is None and isinstance(row["generated_text"], str), (name, row["error"])
        assert row["num_frames"] == 4
        assert all(0 <= target - stamp < 1 / FPS for stamp, target in zip(row["frame_timestamps"], targets))
        # Four frames' worth of image tokens in one turn, beside the same text as the image row's.
        assert row["num_input_tokens"] == text_tokens + 4 * per_image
        assert row["num_input_tokens"] == still["num_input_tokens"] + 3 * per_image
