"""Every input of a corpus of bad and awkward files yields exactly one row: a caption where the image can be
used, an error naming the reason where it cannot. The job still exits 0 when told the error share is expected."""

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


def test_every_bad_or_awkward_file_gives_exactly_one_row(tmp_path, tiny_models):
    folder = tmp_path / "corpus"
    write_corpus(folder)
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
    assert main(argv + ["--max-new-tokens", "3", "--batch-size", "4", "--max-error-rate", "0.5"]) == 0
    rows = {row["id"]: row for row in pq.read_table(output).to_pylist()}
    assert sorted(rows) == sorted([*USABLE, *UNUSABLE])
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
