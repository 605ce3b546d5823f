"""Every input of a corpus of bad and awkward files yields exactly one row: a caption where the image can be
used, an error naming the reason where it cannot. The job still exits 0 when told the error share is expected."""

import json
import logging
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import main
from llava_batch.operators.decode import decode_image
from tests.support.bad_images import UNUSABLE, USABLE, write_corpus

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("name", sorted(USABLE))
def test_usable_files_decode_to_rgb(name):
    image = decode_image(USABLE[name], max_image_pixels=64_000_000)
    assert image.mode == "RGB" and image.width >= 1 and image.height >= 1


def test_special_cases_decode_as_stated():
    assert decode_image(USABLE["exif-rotated.jpg"], max_image_pixels=10**8).size == (24, 48)
    assert (
        decode_image(USABLE["animated.gif"], max_image_pixels=10**8).getpixel((5, 5))[0] > 200
    )  # first frame: red
    assert decode_image(USABLE["animated.webp"], max_image_pixels=10**8).getpixel((5, 5))[0] > 200
    assert decode_image(USABLE["la-transparent.png"], max_image_pixels=10**8).getpixel((0, 0)) == (
        255,
        255,
        255,
    )
    assert decode_image(USABLE["very-wide.png"], max_image_pixels=10**8).size == (10_000, 10)


def test_every_bad_or_awkward_file_gives_exactly_one_row(tmp_path, tiny_models, caplog):
    folder = tmp_path / "corpus"
    write_corpus(folder)
    # Beside the images: a link loop (it once turned 44 images into 1,804 rows), a dangling link, a 16-byte
    # "video" (an input, so an error row) and a text file (skipped).
    (folder / "loop").mkdir()
    os.symlink("..", folder / "loop" / "up")
    os.symlink("moved-away.png", folder / "dangling.png")
    (folder / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (folder / "notes.txt").write_text("not an image")
    output = tmp_path / "out"
    argv = [
        "caption",
        "--input",
        str(folder),
        "--output",
        str(output),
        "--model",
        str(tiny_models["llava_next"]),
    ]
    with caplog.at_level(logging.INFO, logger="llava_batch.pipeline.io.storage"):
        assert main(argv + ["--max-new-tokens", "3", "--batch-size", "4", "--max-error-rate", "0.5"]) == 0
    assert f"{folder}: skipped 1 non-image, non-video file (.txt: 1)" in caplog.messages
    table = pq.read_table(output)
    rows = {row["id"]: row for row in table.to_pylist()}
    assert table.num_rows == len(rows)
    assert sorted(rows) == sorted([*USABLE, *UNUSABLE, "dangling.png", "clip.mp4"])
    assert rows["dangling.png"]["error"] == "read: broken symlink -> moved-away.png"
    assert rows["clip.mp4"]["error"].startswith("decode: cannot decode the video: InvalidDataError")
    for name in USABLE:
        assert rows[name]["error"] is None, (name, rows[name]["error"])
        assert isinstance(rows[name]["generated_text"], str) and rows[name]["num_output_tokens"] > 0
    for name, (_, reason) in UNUSABLE.items():
        assert rows[name]["error"].startswith(reason), (name, rows[name]["error"])
        assert rows[name]["generated_text"] is None
    assert "2500000000 pixels" in rows["bomb.png"]["error"]


def test_oversize_images_are_refused_under_the_job_limit(tmp_path):
    from llava_batch.operators.decode import ImageDecodeError
    from tests.support.bad_images import png_bomb

    with pytest.raises(
        ImageDecodeError, match="image is 3000x3000 = 9000000 pixels, over max_image_pixels=1000000"
    ):
        decode_image(png_bomb(3000, 3000), max_image_pixels=1_000_000)


@pytest.mark.slow  # beyond the smoke set of `make test`; CI runs it (`make test-slow`)
def test_parquet_files_with_bad_ids_or_columns_lose_no_row(tmp_path, tiny_models):
    """Duplicate and null ids, a file whose image column is int64 and one with no image column: every table
    row is one output row, the good rows are captioned, the run finishes with a manifest and exit 0."""
    from tests.support.images import image_bytes

    tables = tmp_path / "tables"
    tables.mkdir()
    images = [image_bytes(index, (16, 12), "PNG") for index in range(4)]
    pq.write_table(pa.table({"key": ["x", "y", "x", None], "image": images}), tables / "a.parquet")
    pq.write_table(pa.table({"key": ["p", "q"], "image": [1, 2]}), tables / "b.parquet")
    pq.write_table(pa.table({"key": ["r"], "caption": ["no image"]}), tables / "c.parquet")
    pq.write_table(pa.table({"key": ["z"], "image": images[:1]}), tables / "d.parquet")
    output = tmp_path / "out"
    argv = ["caption", "--input", str(tables), "--output", str(output), "--id-column", "key"]
    argv += ["--model", str(tiny_models["llava"]), "--max-new-tokens", "2", "--max-error-rate", "0.8"]
    assert main(argv) == 0

    rows = {row["id"]: row for row in pq.read_table(output).to_pylist()}
    assert sorted(rows) == [
        "a.parquet#2",
        "a.parquet#3",
        "b.parquet#0",
        "b.parquet#1",
        "c.parquet#0",
        "x",
        "y",
        "z",
    ]
    errors = {row_id: row["error"] for row_id, row in rows.items()}
    assert errors["a.parquet#2"] == "read: duplicate id 'x' (also row 0)"
    assert errors["a.parquet#3"] == "read: id column 'key' is null"
    assert errors["b.parquet#1"].startswith(
        f"read: column 'image' of {tables}/b.parquet is int64, not bytes/"
    )
    assert errors["c.parquet#0"].startswith(f"read: {tables}/c.parquet has no image column")
    for good in ("x", "y", "z"):
        assert errors[good] is None and rows[good]["generated_text"] is not None
    manifest = json.loads((output / "_manifest.json").read_text())
    assert manifest["counts"]["rows_written"] == 8 and manifest["counts"]["errors_by_kind"] == {"read": 5}
