"""The processor's first and last step on hand-built batches, without Ray: every kind of image cell, the
caller's columns under their own names, ids from content."""

import json

import numpy as np

from llava_batch.operators.batch import object_array
from llava_batch.processor import USER_PREFIX, to_caller_rows, to_pipeline_rows


def test_every_kind_of_image_cell_becomes_image_bytes_or_an_error(tmp_path):
    on_disk = tmp_path / "photo.png"
    on_disk.write_bytes(b"png-bytes-from-disk")
    cells = [
        b"raw-bytes",
        {"bytes": b"struct-bytes", "path": "x.png"},
        {"bytes": None, "path": str(on_disk)},
        np.array([b"first", b"second"], dtype=object),
        str(on_disk),
        None,
        str(tmp_path / "missing.png"),
    ]
    batch = {"image": object_array(cells), "prompt": object_array([f"p{i}" for i in range(len(cells))])}
    out = to_pipeline_rows(batch, image_column="image", s3_endpoint_url=None)
    assert [list(images) if images is not None else None for images in out["image_bytes"]] == [
        [b"raw-bytes"],
        [b"struct-bytes"],
        [b"png-bytes-from-disk"],
        [b"first", b"second"],
        [b"png-bytes-from-disk"],
        None,
        None,
    ]
    assert list(out["error"][:5]) == [None] * 5
    assert out["error"][5] == "read: image in column 'image' is null"
    assert (
        out["error"][6]
        == f"read: image in column 'image' names a file that does not exist: {tmp_path}/missing.png"
    )
    # The caller's columns travel under the private prefix; `fields` (for prompt templates) holds the others.
    assert list(out[USER_PREFIX + "prompt"]) == [f"p{i}" for i in range(len(cells))]
    assert json.loads(out["fields"][0]) == {"prompt": "p0"}
    assert list(out["shard_rows"]) == [1] * len(cells)


def test_ids_come_from_the_content_so_a_row_keeps_its_id_and_sampling_seed():
    batch = {"image": object_array([b"a", b"a", b"b"]), "n": np.array([1, 2, 1])}
    first = to_pipeline_rows(batch, image_column="image", s3_endpoint_url=None)["id"]
    again = to_pipeline_rows(batch, image_column="image", s3_endpoint_url=None)["id"]
    assert list(first) == list(again)
    assert len(set(first)) == 3  # same image, other field -> other id; other image -> other id


def test_the_last_step_returns_the_callers_columns_and_the_results():
    batch = {
        USER_PREFIX + "id": np.array([7]),
        USER_PREFIX + "prompt": object_array(["mine"]),
        "id": object_array(["internal"]),
        "prompt": object_array(["USER: <image>\\nmine ASSISTANT:"]),
        "prompt_id": object_array(["p1"]),
        "model_inputs": object_array([b"..."]),
        "generated_text": object_array(["a red circle"]),
        "num_input_tokens": np.array([20]),
        "num_output_tokens": np.array([4]),
        "finish_reason": object_array(["stop"]),
        "error": object_array([None]),
    }
    out = to_caller_rows(batch, keep_prompt_id=False).to_pydict()
    assert sorted(out) == sorted(
        ["id", "prompt", "generated_text", "num_input_tokens", "num_output_tokens", "finish_reason", "error"]
    )
    assert (out["id"][0], out["prompt"][0], out["generated_text"][0]) == (7, "mine", "a red circle")
    assert to_caller_rows(batch, keep_prompt_id=True).to_pydict()["prompt_id"] == ["p1"]
