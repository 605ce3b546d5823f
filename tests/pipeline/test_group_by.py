"""--group-by: several images per row (frames of a video, views of an object), read in order, no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llava_batch.jobs.caption import CaptionConfig
from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.io.formats import plan_shards
from llava_batch.pipeline.io.read_stage import read_shards
from llava_batch.pipeline.io.shards import ReadSpec, Shard, shard_id_for
from llava_batch.pipeline.io.storage import StorageOptions
from tests.support.images import image_bytes

OPTIONS = StorageOptions()
FRAMES = [image_bytes(index, (20 + index, 10), "PNG") for index in range(7)]


def read(shards: list[Shard], spec: ReadSpec) -> list[dict]:
    items = [shard.to_item() for shard in shards]
    batch = {name: np.array([item[name] for item in items], dtype=object) for name in items[0]}
    out = read_shards(batch, options=OPTIONS, spec=spec)
    return [{name: out[name][index] for name in out} for index in range(len(out["id"]))]


def write_frames(root: Path, layout: dict[str, list[int]]) -> None:
    for folder, indices in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for position, index in enumerate(indices):
            (root / folder / f"frame_{position:03d}.png").write_bytes(FRAMES[index])


def test_folders_become_rows_with_their_frames_in_name_order_and_are_never_split(tmp_path):
    # Written in reverse index order so that name order, not write or index order, is what counts.
    write_frames(tmp_path / "in", {"video1": [3, 1, 0], "video2": [2, 4], "video3": [6, 5]})
    kind, shards = plan_shards(str(tmp_path / "in"), OPTIONS, files_per_shard=4, group_by="folder")
    assert kind == "images"
    # 3 + 2 files would exceed 4: video1 alone, then video2 and video3 together; no folder is split.
    assert [shard.members for shard in shards] == [
        ("video1/frame_000.png", "video1/frame_001.png", "video1/frame_002.png"),
        ("video2/frame_000.png", "video2/frame_001.png", "video3/frame_000.png", "video3/frame_001.png"),
    ]
    rows = read(shards, ReadSpec(group_by="folder"))
    assert [row["id"] for row in rows] == ["video1", "video2", "video3"]
    assert [row["image_bytes"] for row in rows] == [
        [FRAMES[3], FRAMES[1], FRAMES[0]],
        [FRAMES[2], FRAMES[4]],
        [FRAMES[6], FRAMES[5]],
    ]
    assert [row["shard_rows"] for row in rows] == [1, 2, 2]  # rows per shard: groups, not files
    assert rows[0]["source"] == f"{tmp_path}/in/video1" and rows[0]["error"] is None


def test_a_folder_larger_than_a_shard_is_a_shard_of_its_own(tmp_path):
    write_frames(tmp_path / "in", {"a": [0], "big": [1, 2, 3], "c": [4]})
    (tmp_path / "in" / "top.png").write_bytes(FRAMES[6])
    _, shards = plan_shards(str(tmp_path / "in"), OPTIONS, files_per_shard=2, group_by="folder")
    # a | big (over the limit, alone) | c + top.png (the prefix's own files form the group ".")
    assert [len(shard.members) for shard in shards] == [1, 3, 2]
    assert [row["id"] for row in read(shards, ReadSpec(group_by="folder"))] == ["a", "big", "c", "."]
    top = read(shards[2:], ReadSpec(group_by="folder"))[1]
    assert (top["id"], top["source"], top["image_bytes"]) == (".", str(tmp_path / "in"), [FRAMES[6]])


def write_views(path: Path) -> Shard:
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "object": ["cup", "pen", "cup", None, "pen", "cup"],
            "view": [2, 1, 0, 0, 0, 1],
            "image": [FRAMES[0], FRAMES[1], FRAMES[2], FRAMES[3], b"", FRAMES[5]],
            "label": ["mug", "biro", "mug", "x", "biro", "mug"],
        }
    )
    pq.write_table(table, path)
    return Shard(shard_id_for((path.name,)), str(path.parent), (path.name,), "parquet")


def test_parquet_rows_group_by_a_column_in_file_order_or_by_an_order_column(tmp_path):
    shard = write_views(tmp_path / "in" / "views.parquet")
    rows = {row["id"]: row for row in read([shard], ReadSpec(group_by="object", keep_columns=("label",)))}
    assert sorted(rows) == ["cup", "pen", "views.parquet#3"]
    assert rows["cup"]["image_bytes"] == [FRAMES[0], FRAMES[2], FRAMES[5]]  # file order
    assert rows["cup"]["label"] == "mug" and json.loads(rows["cup"]["fields"])["object"] == "cup"
    assert rows["cup"]["source"] == f"{tmp_path}/in/views.parquet#cup"
    assert rows["views.parquet#3"]["error"] == "read: group_by column 'object' is null in this row"
    ordered = {row["id"]: row for row in read([shard], ReadSpec(group_by="object", order_by="view"))}
    assert ordered["cup"]["image_bytes"] == [FRAMES[2], FRAMES[5], FRAMES[0]]  # view 0, 1, 2


def test_a_group_with_a_failed_member_is_one_error_row_naming_it(tmp_path):
    path = tmp_path / "in" / "views.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"object": ["pen", "pen"], "image": [FRAMES[1], None]}), path)
    shard = Shard(shard_id_for((path.name,)), str(path.parent), (path.name,), "parquet")
    (row,) = read([shard], ReadSpec(group_by="object"))
    assert row["id"] == "pen" and row["image_bytes"] is None
    assert row["error"].startswith("read: image views.parquet#1 of the group: ")


def test_grouping_settings_are_checked_before_any_work(tmp_path):
    write_frames(tmp_path / "in", {"v": [0]})
    with pytest.raises(ConfigError, match="group_by: image folders are grouped by 'folder'"):
        plan_shards(str(tmp_path / "in"), OPTIONS, group_by="object")
    shard = write_views(tmp_path / "tables" / "views.parquet")
    with pytest.raises(ConfigError, match="group_by: for Parquet input name the column"):
        plan_shards(str(tmp_path / "tables"), OPTIONS, group_by="folder")
    # A table without the column: its rows become error rows (other files may have it), one per table row.
    rows = read([shard], ReadSpec(group_by="shape"))
    assert [row["id"] for row in rows] == [f"views.parquet#{index}" for index in range(6)]
    assert {row["error"] for row in rows} == {
        f"read: {tmp_path}/tables/views.parquet has no column 'shape' (group_by); "
        "its columns: ['object', 'view', 'image', 'label']"
    }
    with pytest.raises(ConfigError, match="order_by: 'view' orders the rows of a group; it needs --group-by"):
        CaptionConfig(input="/a", output="/b", model="m", order_by="view")
    with pytest.raises(ConfigError, match="order_by: 'view' cannot be used with --group-by folder"):
        CaptionConfig(input="/a", output="/b", model="m", group_by="folder", order_by="view")


def test_three_views_of_one_object_are_one_row_of_three_images_and_three_placeholders(tmp_path, tiny_models):
    """The README's multi-view recipe: a folder per object, --group-by folder, one `<image>` per view."""
    from llava_batch.operators.preprocess import PreprocessForModel
    from llava_batch.operators.tensor_codec import unpack_arrays

    for position, view in enumerate(["1_front", "2_side", "3_top"]):
        (tmp_path / "in" / "chair").mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / "chair" / f"{view}.png").write_bytes(FRAMES[position])
    _, shards = plan_shards(str(tmp_path / "in"), OPTIONS, group_by="folder")
    (row,) = read(shards, ReadSpec(group_by="folder"))
    assert row["id"] == "chair" and row["image_bytes"] == FRAMES[:3]
    preprocess = PreprocessForModel(str(tiny_models["llava_interleave"]), max_image_pixels=10**6)
    prompts = [
        "Front: <image> Side: <image> Top: <image> Which object?",
        "Which object?",  # no placeholder: all the row's images first
        "Compare <image> with <image>.",
        "<image> Which object?",  # one view alone, for one image's token count
    ]
    payloads = np.empty(4, dtype=object)
    payloads[:] = [row["image_bytes"]] * 3 + [row["image_bytes"][:1]]
    out = preprocess({"image_bytes": payloads, "prompt": np.array(prompts, dtype=object)})
    assert list(out["error"]) == [
        None,
        None,
        "preprocess: the prompt has 2 image placeholder(s) but the row has 3 image(s)",
        None,
    ]
    one_view = out["num_image_tokens"][3]
    assert one_view > 0 and list(out["num_image_tokens"][:2]) == [3 * one_view, 3 * one_view]
    for index in (0, 1):
        arrays = unpack_arrays(out["model_inputs"][index])
        assert arrays["pixel_values"].shape[0] == 3
        ids = arrays["input_ids"].tolist()
        assert ids.count(preprocess.image_token_id) == 3 * one_view
    # Where the images go in the text is the chat template's choice (LLaVA-Interleave's puts them all first);
    # the labelled prompt only adds its words.
    assert out["num_input_tokens"][0] > out["num_input_tokens"][1]
