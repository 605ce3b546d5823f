"""Frame sampling of video inputs (operators/video.py) on videos written by PyAV in the test: a white square moves
4 pixels right per frame, so each sampled frame's square position says which frame it is."""

import io

import numpy as np
import pytest

from llava_batch.operators.video import VideoDecodeError, frame_targets, sample_frames

av = pytest.importorskip("av")

FPS = 10
FRAMES = 20  # 2.0 s
WIDTH, HEIGHT = 96, 48
STEP = 4  # pixels the square moves per frame


def moving_square_video(frames: int = FRAMES, *, fmt: str = "mp4", codec: str = "mpeg4") -> bytes:
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for index in range(frames):
            pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            pixels[16:32, STEP * index : STEP * index + 16] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def frame_index(image) -> int:
    """Which frame an image is: the left edge of the bright square, in steps."""
    bright = np.asarray(image.convert("L"))[24] > 128
    return round(int(np.argmax(bright)) / STEP)


def test_frames_are_spread_uniformly_in_time_order():
    sampled = sample_frames(moving_square_video(), num_frames=4, max_image_pixels=10**6)
    # Targets at the middle of four 0.5 s spans: 0.25, 0.75, 1.25, 1.75 s -> frames 2, 7, 12, 17 (0.1 s each:
    # the frame on screen at each target).
    assert frame_targets(2.0, 4) == [0.25, 0.75, 1.25, 1.75]
    assert sampled.timestamps == [0.2, 0.7, 1.2, 1.7]
    assert [frame_index(image) for image in sampled.frames] == [2, 7, 12, 17]
    assert {image.size for image in sampled.frames} == {(WIDTH, HEIGHT)}
    assert {image.mode for image in sampled.frames} == {"RGB"}


def test_webm_and_more_frames_than_half_the_video():
    sampled = sample_frames(
        moving_square_video(fmt="webm", codec="libvpx"), num_frames=16, max_image_pixels=10**6
    )
    assert len(sampled.frames) == 16
    assert sampled.timestamps == sorted(sampled.timestamps)
    indices = [frame_index(image) for image in sampled.frames]
    assert indices == [round(stamp * FPS) for stamp in sampled.timestamps]
    # Targets (i + 0.5) x 0.125 s: frame 0 at 0.0625 s, frame 19 at 1.9375 s.
    assert indices[0] == 0 and indices[-1] == FRAMES - 1


@pytest.mark.parametrize(
    ("data", "limit", "message"),
    [
        (b"", 10**6, "empty file (0 bytes)"),
        (b"<html>not a video</html>", 10**6, "cannot decode the video: "),
        (None, 1000, "video frames are 96x48 = 4608 pixels, over max_image_pixels=1000"),
    ],
)
def test_bad_videos_raise_the_row_error(data, limit, message):
    data = moving_square_video() if data is None else data
    with pytest.raises(VideoDecodeError) as error:
        sample_frames(data, num_frames=4, max_image_pixels=limit)
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    ("fmt", "codec", "keep", "message"),
    [
        ("mp4", "mpeg4", 3, "cannot decode the video: InvalidDataError"),  # the index (moov) is missing
        ("webm", "libvpx", 2, "the video stops at 0.00 s of its stated 2.00 s (truncated?)"),
    ],
)
def test_a_truncated_video_is_refused(fmt, codec, keep, message):
    whole = moving_square_video(fmt=fmt, codec=codec)
    with pytest.raises(VideoDecodeError) as error:
        sample_frames(whole[: len(whole) // keep], num_frames=4, max_image_pixels=10**6)
    assert str(error.value).startswith(message)


def test_a_video_shorter_than_the_frames_asked_for_repeats_its_last_frame():
    sampled = sample_frames(moving_square_video(frames=5), num_frames=8, max_image_pixels=10**6)
    # Targets 0.03, 0.09, 0.16, 0.22, 0.28, 0.34, 0.41, 0.47 s over frames starting every 0.1 s.
    assert [frame_index(image) for image in sampled.frames] == [0, 0, 1, 2, 2, 3, 4, 4]
    assert sampled.timestamps == [0.0, 0.0, 0.1, 0.2, 0.2, 0.3, 0.4, 0.4]


def test_a_file_without_a_video_stream_is_refused():
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(VideoDecodeError, match="^no video stream in the file$"):
        sample_frames(buffer.getvalue(), num_frames=4, max_image_pixels=10**6)


def test_a_video_row_is_n_frames_in_one_turn_of_the_interleave_model(tiny_models):
    from llava_batch.operators.generation.replica import Generate
    from llava_batch.operators.preprocess import PreprocessForModel
    from llava_batch.operators.tensor_codec import unpack_arrays
    from llava_batch.operators.video import is_video
    from tests.support.images import image_bytes

    model = str(tiny_models["llava_interleave"])
    preprocess = PreprocessForModel(model, max_image_pixels=10**6, video_frames=4)
    video = moving_square_video()
    assert is_video(video) and is_video(moving_square_video(fmt="webm", codec="libvpx"))
    assert not is_video(image_bytes(0, (40, 30)))
    payloads = np.empty(3, dtype=object)
    payloads[:] = [video, image_bytes(1, (40, 30)), moving_square_video()[:0]]
    batch = {
        "id": np.array(["video", "image", "empty"], dtype=object),
        "image_bytes": payloads,
        "prompt": np.array(["What happens?"] * 3, dtype=object),
    }
    out = preprocess(batch)
    assert list(out["error"]) == [None, None, "decode: empty file (0 bytes)"]
    assert list(out["num_frames"]) == [4, None, None]
    assert list(out["frame_timestamps"]) == [[0.2, 0.7, 1.2, 1.7], None, None]
    # Four frames' worth of image tokens: four times one image's.
    assert out["num_image_tokens"][0] == 4 * out["num_image_tokens"][1] > 0
    assert unpack_arrays(out["model_inputs"][0])["pixel_values"].shape[0] == 4
    generate = Generate(model, generate_kwargs={"max_new_tokens": 3, "do_sample": False}, dtype="float32")
    generated = generate(out)
    assert [isinstance(text, str) for text in generated["generated_text"]] == [True, True, False]
    assert generated["num_output_tokens"][0] >= 1


def test_without_pyav_a_video_is_an_error_row_naming_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError
    with pytest.raises(VideoDecodeError) as error:
        sample_frames(b"\x00\x00\x00\x18ftypisom" + bytes(64), num_frames=4, max_image_pixels=10**6)
    assert str(error.value) == (
        "the av package (PyAV) is needed to decode videos; pip install llava-batch[video]"
    )
