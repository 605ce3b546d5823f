"""The trained interleave checkpoint on real video files through the whole pipeline: held-out clips of its video
task (a shape slides across a still background beside a still shape of another colour) written as H.264, VP9 and
MPEG-4 files, read from a Parquet column of bytes, sampled by the video reader (--video-frames, default 8) and
captioned; "the red shape moves left" must be answered exactly on at least 95% of them. A reader that returns
frames out of order, the wrong frames, or one frame repeated, cannot say which colour moves or which way."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import main
from llava_batch.operators.video import DEFAULT_VIDEO_FRAMES
from llava_batch.training.shapes import samples
from tests.support.videos import CLIP_SECONDS, CODECS, clip_bytes

pytest.importorskip("av")

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIPS = 96
BAR = 0.95


def heldout_clips(count: int) -> list:
    drawn = samples(
        "llava_interleave", "heldout", 4 * count, seed=0
    )  # a third of the rows are the video task
    clips = [sample for sample in drawn if sample.scene is not None][:count]
    assert len(clips) == count
    return clips


def test_trained_interleave_model_says_what_moves_in_real_videos_through_the_pipeline(tmp_path):
    clips = heldout_clips(CLIPS)
    ids, videos, kinds = [], [], []
    for index, clip in enumerate(clips):
        container_format, codec, extension = CODECS[index % len(CODECS)]
        ids.append(f"clip-{index:03d}.{extension}")
        videos.append(clip_bytes(clip.scene, container_format, codec))
        kinds.append(extension)
    answers = dict(zip(ids, (clip.answer for clip in clips)))
    table = pa.table(
        {
            "uid": ids,
            "video": videos,
            "question": [clip.prompt for clip in clips],
            "answer": [clip.answer for clip in clips],
        }
    )
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "clips.parquet")

    argv = ["caption", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    argv += ["--model", "builtin:llava_interleave", "--id-column", "uid", "--image-column", "video"]
    argv += ["--prompt-column", "question", "--keep-columns", "answer", "--max-new-tokens", "16"]
    assert main(argv) == 0

    rows = {row["id"]: row for row in pq.read_table(tmp_path / "out").to_pylist()}
    assert sorted(rows) == sorted(ids)
    assert [rows[uid]["error"] for uid in ids] == [None] * CLIPS
    # Frames at the middle of eight equal spans of each 2 s clip, in time order.
    step = CLIP_SECONDS / DEFAULT_VIDEO_FRAMES
    expected_stamps = [step * (index + 0.5) for index in range(DEFAULT_VIDEO_FRAMES)]
    for uid in ids:
        assert rows[uid]["num_frames"] == DEFAULT_VIDEO_FRAMES
        assert rows[uid]["frame_timestamps"] == pytest.approx(expected_stamps, abs=1 / 24 + 1e-6)
    correct = {uid: rows[uid]["generated_text"] == answers[uid] for uid in ids}
    accuracy = sum(correct.values()) / CLIPS
    by_codec = {
        kind: sum(correct[uid] for uid, k in zip(ids, kinds) if k == kind) / kinds.count(kind)
        for kind in sorted(set(kinds))
    }
    wrong = [(uid, rows[uid]["generated_text"], answers[uid]) for uid in ids if not correct[uid]][:5]
    print(f"video task: exact match {accuracy:.3f} on {CLIPS} held-out clips ({by_codec}); wrong: {wrong}")
    assert accuracy >= BAR, (accuracy, by_codec, wrong)
