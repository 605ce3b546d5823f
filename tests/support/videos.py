"""Real video files of the trained interleave model's video task (training/shapes.py: `MovingScene`), written with
PyAV in H.264, VP9 or MPEG-4, so a test can run them through the pipeline's own video reader."""

from __future__ import annotations

import io

import numpy as np

from llava_batch.training.shapes import MovingScene

# container format, codec, file extension: what cameras, browsers and older tools write.
CODECS = [("mp4", "libx264", "mp4"), ("webm", "libvpx-vp9", "webm"), ("matroska", "mpeg4", "mkv")]
CLIP_FPS = 24
CLIP_SECONDS = 2


def clip_bytes(
    scene: MovingScene, container_format: str, codec: str, *, fps: int = CLIP_FPS, seconds: int = CLIP_SECONDS
) -> bytes:
    """`scene` as a `seconds`-long video: frame k shows the scene at time k / (fps * seconds) of the clip, so the
    frame on screen at any moment is the scene at most one frame period earlier."""
    import av

    count = fps * seconds
    width, height = scene.still.size
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for index in range(count):
            pixels = np.asarray(scene.frame(index / count))
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()
