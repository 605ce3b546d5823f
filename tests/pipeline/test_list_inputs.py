"""Listing image folders on a local disk: symlink loops and aliases list each file once, a dangling symlink
becomes an error row naming its target, video files are rows (and need PyAV, checked up front), and skipped files
are counted in the log. No Ray."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

from llava_batch.pipeline.config import ConfigError
from llava_batch.pipeline.io.formats import check_video_decoder, plan_shards
from llava_batch.pipeline.io.formats.images import plan_image_shards
from llava_batch.pipeline.io.read_stage import read_shards
from llava_batch.pipeline.io.shards import ReadSpec
from llava_batch.pipeline.io.storage import StorageOptions, list_files
from tests.support.images import image_bytes

OPTIONS = StorageOptions()


def make_images(folder: Path, names: list[str]) -> None:
    for index, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(image_bytes(index, (8, 8), "PNG"))


def read_rows(root: Path) -> dict[str, dict]:
    kind, shards = plan_shards(str(root), OPTIONS, files_per_shard=100)
    assert kind == "images"
    batch = {name: [shard.to_item()[name] for shard in shards] for name in shards[0].to_item()}
    out = read_shards(batch, options=OPTIONS, spec=ReadSpec())
    return {row_id: {name: out[name][index] for name in out} for index, row_id in enumerate(out["id"])}


def test_a_symlink_loop_lists_each_image_once(tmp_path: Path) -> None:
    make_images(tmp_path, ["a.png", "b.png", "loop/c.png"])
    os.symlink("..", tmp_path / "loop" / "up")  # loop/up/loop/up/... is the same tree again
    os.symlink(tmp_path / "loop", tmp_path / "alias")  # an alias of a folder already listed
    os.symlink("a.png", tmp_path / "same-as-a.png")  # an alias of a file already listed
    assert list_files(str(tmp_path), OPTIONS, ("png",)) == ["a.png", "b.png", "loop/c.png"]


def test_a_symlinked_folder_outside_the_tree_is_listed_under_the_link(tmp_path: Path) -> None:
    make_images(tmp_path / "elsewhere", ["x.png"])
    make_images(tmp_path / "in", ["a.png"])
    os.symlink(tmp_path / "elsewhere", tmp_path / "in" / "linked")
    os.symlink(tmp_path / "in", tmp_path / "elsewhere" / "back")  # loops back into the input
    assert list_files(str(tmp_path / "in"), OPTIONS, ("png",)) == ["a.png", "linked/x.png"]


def test_dangling_and_looping_symlinks_become_error_rows(tmp_path: Path) -> None:
    make_images(tmp_path, ["good.png"])
    os.symlink("gone/photo.png", tmp_path / "dangling.png")
    os.symlink("self.png", tmp_path / "self.png")
    rows = read_rows(tmp_path)
    assert sorted(rows) == ["dangling.png", "good.png", "self.png"]
    assert rows["good.png"]["error"] is None
    assert rows["dangling.png"]["error"] == "read: broken symlink -> gone/photo.png"
    assert rows["self.png"]["error"] == "read: symlink loop -> self.png (Too many levels of symbolic links)"
    assert {rows[name]["shard_rows"] for name in rows} == {3}


def test_skipped_non_image_files_are_counted_in_the_log(tmp_path: Path, caplog) -> None:
    make_images(tmp_path, ["a.jpg", "b/c.png"])
    for name in ["clip.mp4", "b/clip2.MP4", "notes.txt", "README"]:
        (tmp_path / name).write_bytes(b"x")
    with caplog.at_level(logging.INFO, logger="llava_batch.pipeline.io.storage"):
        shards = plan_image_shards(str(tmp_path), OPTIONS, files_per_shard=10)
    # Videos (any case) are inputs like images; with --group-by folder a row is a list of images, so they are not.
    assert [shard.members for shard in shards] == [("a.jpg",), ("b/c.png", "b/clip2.MP4"), ("clip.mp4",)]
    assert f"{tmp_path}: skipped 2 non-image, non-video files ((no extension): 1, .txt: 1)" in caplog.messages
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="llava_batch.pipeline.io.storage"):
        grouped = plan_image_shards(str(tmp_path), OPTIONS, files_per_shard=10, whole_folders=True)
    assert [shard.members for shard in grouped] == [("a.jpg", "b/c.png")]
    assert f"{tmp_path}: skipped 4 non-image files (.mp4: 2, (no extension): 1, .txt: 1)" in caplog.messages


def test_a_folder_of_videos_is_an_image_folder_of_one_row_per_video(tmp_path: Path) -> None:
    for name in ["a.webm", "b/c.MOV", "d.mkv", "e.avi", "f.mp4"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"video bytes " + name.encode())
    rows = read_rows(tmp_path)  # --input-format auto
    assert sorted(rows) == ["a.webm", "b/c.MOV", "d.mkv", "e.avi", "f.mp4"]
    assert rows["b/c.MOV"]["image_bytes"] == [b"video bytes b/c.MOV"]
    assert rows["b/c.MOV"]["source"] == str(tmp_path / "b" / "c.MOV")
    assert {rows[name]["error"] for name in rows} == {None}


def test_video_files_without_pyav_fail_before_ray_starts(tmp_path: Path, monkeypatch) -> None:
    make_images(tmp_path, ["a.png"])
    (tmp_path / "clips").mkdir()
    for name in ["one.mp4", "two.webm"]:
        (tmp_path / "clips" / name).write_bytes(b"x")
    kind, shards = plan_shards(str(tmp_path), OPTIONS, files_per_shard=100)
    check_video_decoder(kind, shards, OPTIONS)  # PyAV is installed here: nothing to say
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` fails, as without the extra
    with pytest.raises(ConfigError) as error:
        check_video_decoder(kind, shards, OPTIONS)
    assert str(error.value) == (
        "input: holds video files (clips/one.mp4 and 1 more), which need the av package (PyAV), not installed "
        "in this environment; install it with `pip install llava-batch[video]`"
    )
    # Images only: PyAV is not needed.
    kind, shards = plan_shards(str(tmp_path), OPTIONS, files_per_shard=100, group_by="folder")
    check_video_decoder(kind, shards, OPTIONS)
