"""--group-by folder end to end: frames of a video folder become one multi-image row of an interleave model."""

import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import main
from tests.support.images import image_bytes

pytestmark = pytest.mark.integration


@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_each_folder_is_one_row_and_a_wrong_image_count_is_an_error_row(tmp_path, tiny_models, capsys):
    layout = {"video1": 2, "video2": 2, "video3": 3}
    for folder, count in layout.items():
        (tmp_path / "in" / folder).mkdir(parents=True)
        for index in range(count):
            (tmp_path / "in" / folder / f"frame_{index:03d}.png").write_bytes(image_bytes(index, (32, 24)))
    argv = ["caption", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")]
    argv += ["--model", str(tiny_models["llava_interleave"]), "--group-by", "folder"]
    argv += ["--prompt", "What changed between <image> and <image>?", "--max-new-tokens", "4"]
    argv += ["--files-per-shard", "4", "--max-error-rate", "0.5"]
    assert main(argv) == 0
    rows = {row["id"]: row for row in pq.read_table(tmp_path / "out").to_pylist()}
    assert sorted(rows) == ["video1", "video2", "video3"]
    assert rows["video3"]["error"] == (
        "preprocess: the prompt has 2 image placeholder(s) but the row has 3 image(s)"
    )
    for name in ("video1", "video2"):
        assert rows[name]["error"] is None and isinstance(rows[name]["generated_text"], str)
        assert rows[name]["source"] == str(tmp_path / "in" / name)
    # Same prompt, two images each: the same prompt length, image tokens of both images included.
    assert rows["video1"]["num_input_tokens"] == rows["video2"]["num_input_tokens"]
    assert "rows written      3" in capsys.readouterr().out
