"""Sample a video's frames for one row: N frames spread uniformly over its duration, in time order, with their
timestamps (PyAV). Used where a video file is an input; a file that cannot be used raises `VideoDecodeError`.

The LLaVA-Interleave card: "if you sampled n frames from a video, put n images in one turn".
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from llava_batch.operators.decode import ImageDecodeError

VIDEO_EXTENSIONS = ("mp4", "webm", "mov", "mkv", "avi")
DEFAULT_VIDEO_FRAMES = 8


class VideoDecodeError(ImageDecodeError):
    """The bytes are not a usable video; the message is what lands in the row's `error` (kind `decode`)."""


# ISO-BMFF brands of still images (HEIF, AVIF), which share MP4's `ftyp` box.
_STILL_IMAGE_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"mif1", b"msf1", b"avif", b"avis"})


def is_video(data: bytes) -> bool:
    """Whether bytes hold a video container, by their first bytes: MP4/MOV (`ftyp` box), Matroska/WebM (EBML
    header) or AVI (RIFF `AVI `). Rows carry bytes without names, so the content decides."""
    if len(data) < 12:
        return False
    if data[4:8] == b"ftyp":
        return data[8:12] not in _STILL_IMAGE_BRANDS
    return data[:4] == b"\x1a\x45\xdf\xa3" or (data[:4] == b"RIFF" and data[8:12] == b"AVI ")


@dataclass(frozen=True)
class SampledFrames:
    frames: list[Image.Image]  # RGB, in time order
    timestamps: list[float]  # seconds from the start of the stream, one per frame


def frame_targets(duration: float, count: int) -> list[float]:
    """The middle of each of `count` equal spans of the duration: uniform, never the very first or last instant."""
    return [(index + 0.5) * duration / count for index in range(count)]


def sample_frames(data: bytes, *, num_frames: int, max_image_pixels: int) -> SampledFrames:
    """Decode-and-drop through the first video stream, keeping only the frame on screen at each target time:
    never all frames in memory. A stream that ends more than one span before its stated duration is cut short."""
    if not data:
        raise VideoDecodeError("empty file (0 bytes)")
    try:
        import av
    except ImportError:
        raise VideoDecodeError(
            "the av package (PyAV) is needed to decode videos; pip install llava-batch[video]"
        ) from None
    try:
        with av.open(io.BytesIO(data)) as container:
            if not container.streams:
                # An MP4 written front to back keeps its index (moov) last: cut short in it, no stream is left.
                raise VideoDecodeError("no streams in the file (cut short, or not a video?)")
            if not container.streams.video:
                raise VideoDecodeError("no video stream in the file")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if width * height > max_image_pixels:
                raise VideoDecodeError(
                    f"video frames are {width}x{height} = {width * height} pixels, over "
                    f"max_image_pixels={max_image_pixels}"
                )
            duration = _duration_s(container, stream)
            if duration is None or duration <= 0:
                raise VideoDecodeError("the video states no duration")
            rate = stream.average_rate
            frame_s = 1 / float(rate) if rate else 0.0
            return _take_frames(container.decode(stream), duration, num_frames, frame_s)
    except VideoDecodeError:
        raise
    except Exception as error:  # PyAV's FFmpeg errors: truncated or corrupt data, unknown container
        raise VideoDecodeError(f"cannot decode the video: {type(error).__name__}: {error}") from None


def _duration_s(container, stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # av.time_base: microseconds
    return None


def _take_frames(decoded, duration: float, count: int, frame_s: float) -> SampledFrames:
    """For each target time, the frame on screen then: the last one starting at or before it."""
    targets = frame_targets(duration, count)
    frames: list[Image.Image] = []
    timestamps: list[float] = []

    def take(frame) -> None:
        frames.append(frame.to_image().convert("RGB"))
        timestamps.append(round(float(frame.time), 6))

    previous = None
    for frame in decoded:
        if frame.time is None:
            continue
        while len(frames) < count and float(frame.time) > targets[len(frames)]:
            take(previous if previous is not None else frame)
        if len(frames) == count:
            break
        previous = frame
    if previous is None and not frames:
        raise VideoDecodeError("no decodable video frames")
    if len(frames) < count:
        # Targets after the last frame's start: it is on screen until the end. A stream that stops further than a
        # span and a frame short of its stated duration was cut (a truncated upload, say).
        stopped = float(previous.time)
        if duration - stopped > duration / count + frame_s:
            raise VideoDecodeError(
                f"the video stops at {stopped:.2f} s of its stated {duration:.2f} s (truncated?)"
            )
        while len(frames) < count:
            take(previous)
    return SampledFrames(frames, timestamps)
