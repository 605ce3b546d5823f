"""WebDataset reader: shard planning (prefixes, brace patterns, globs, --limit) and per-tar rows, no Ray."""

from __future__ import annotations

import gzip
import io
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest

from llava_batch.pipeline.io.formats.webdataset import (
    plan_webdataset_shards,
    read_webdataset_shard,
    sample_key,
    video_files,
)
from llava_batch.pipeline.io.listing import expand_braces
from llava_batch.pipeline.io.read_stage import read_shards
from llava_batch.pipeline.io.shards import ReadSpec, Shard, shard_id_for
from llava_batch.pipeline.io.storage import StorageOptions
from tests.support.images import image_bytes

OPTIONS = StorageOptions()


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = tar_bytes(members)
    path.write_bytes(data)
    return data


def simple_samples(count: int, prefix: str = "s") -> list[tuple[str, bytes]]:
    """`count` samples of a JPEG and a .txt caption each."""
    members = []
    for index in range(count):
        members.append((f"{prefix}{index:03d}.jpg", image_bytes(index, (16, 12), "JPEG")))
        members.append((f"{prefix}{index:03d}.txt", f"caption {prefix}{index}".encode()))
    return members


def by_id_of(rows: list[dict]) -> dict[str, dict]:
    return {row["id"]: row for row in rows}


def read_all(root: Path | str, relative: str, spec: ReadSpec | None = None) -> list[dict]:
    shard = Shard(shard_id_for((relative,)), str(root), (relative,), "webdataset")
    return list(read_webdataset_shard(shard, OPTIONS, spec or ReadSpec()))


# ---------------------------------------------------------------------------------------------------------------
# Reading one tar
# ---------------------------------------------------------------------------------------------------------------


def test_rows_follow_tar_order_with_ids_sources_and_sidecar_fields(tmp_path: Path) -> None:
    zebra, apple = image_bytes(1, (20, 10), "JPEG"), image_bytes(2, (10, 20), "PNG")
    write_tar(
        tmp_path / "shards" / "part-0.tar",
        [
            ("dir/zebra.JPG", zebra),  # upper-case extension: still the image
            ("dir/zebra.json", json.dumps({"caption": "a zebra", "score": 0.5}).encode()),
            ("dir/zebra.cls", b"7"),
            ("apple.png", apple),
            ("apple.txt", b"an apple\n"),
            ("apple.seg.png", b"\x89PNG not the main image"),  # key 'apple', extension 'seg.png'
        ],
    )
    rows = read_all(tmp_path / "shards", "part-0.tar")

    assert [row["id"] for row in rows] == ["part-0.tar/dir/zebra", "part-0.tar/apple"]
    root = str(tmp_path / "shards")
    assert [row["source"] for row in rows] == [f"{root}/part-0.tar#dir/zebra", f"{root}/part-0.tar#apple"]
    assert rows[0]["image_bytes"] == [zebra] and rows[1]["image_bytes"] == [apple]
    assert json.loads(rows[0]["fields"]) == {"caption": "a zebra", "score": 0.5, "cls": "7"}
    assert json.loads(rows[1]["fields"]) == {"txt": "an apple\n"}
    assert [row["error"] for row in rows] == [None, None]


def test_image_priority_is_jpg_then_jpeg_png_webp(tmp_path: Path) -> None:
    write_tar(tmp_path / "a.tar", [("k.webp", b"webp"), ("k.png", b"png"), ("k.jpeg", b"jpeg")])
    (row,) = read_all(tmp_path, "a.tar")
    assert row["image_bytes"] == [b"jpeg"]
    assert json.loads(row["fields"]) == {}


def test_a_video_member_is_the_row_input_when_the_sample_has_no_image(tmp_path: Path) -> None:
    write_tar(
        tmp_path / "a.tar",
        [("clip.mp4", b"mp4"), ("clip.txt", b"a clip"), ("both.webm", b"webm"), ("both.png", b"png")],
    )
    rows = by_id_of(read_all(tmp_path, "a.tar"))
    assert rows["a.tar/clip"]["image_bytes"] == [b"mp4"]
    assert json.loads(rows["a.tar/clip"]["fields"]) == {"txt": "a clip"}  # the video is no text field
    assert rows["a.tar/both"]["image_bytes"] == [b"png"]
    assert {row["error"] for row in rows.values()} == {None}
    # The plan's look at the first tar's headers finds the videos (for the PyAV check before Ray starts).
    shards = plan_webdataset_shards(str(tmp_path), OPTIONS)
    assert video_files(shards, OPTIONS) == ["a.tar/clip.mp4", "a.tar/both.webm"]
    write_tar(tmp_path / "b" / "images.tar", simple_samples(2))
    assert video_files(plan_webdataset_shards(str(tmp_path / "b"), OPTIONS), OPTIONS) == []


def test_keep_columns_come_from_json_and_text_sidecars(tmp_path: Path) -> None:
    write_tar(
        tmp_path / "a.tar",
        [
            ("x.jpg", b"img"),
            ("x.json", json.dumps({"url": "http://example.invalid/x", "width": 640}).encode()),
            ("x.txt", b"caption x"),
            ("y.jpg", b"img"),
        ],
    )
    rows = read_all(tmp_path, "a.tar", ReadSpec(keep_columns=("url", "txt", "width")))
    assert [(row["url"], row["txt"], row["width"]) for row in rows] == [
        ("http://example.invalid/x", "caption x", 640),
        (None, None, None),
    ]


def test_bad_samples_and_stray_members_become_error_rows_and_metadata_is_skipped(
    tmp_path: Path, caplog
) -> None:
    write_tar(
        tmp_path / "a.tar",
        [
            (".DS_Store", b"junk"),
            ("__index__.json", b"{}"),
            ("dir/.hidden.jpg", b"junk"),
            ("README", b"no extension: not part of any sample"),
            ("good.jpg", b"img"),
            ("noimage.txt", b"text only"),
            ("noimage.json", b'{"a": 1}'),
            ("badjson.jpg", b"img"),
            ("badjson.json", b"{not json"),
            ("good2.png", b"img2"),
            (".jpg", b"an image with no key"),
        ],
    )
    with caplog.at_level(logging.INFO, logger="llava_batch.pipeline.io.formats.webdataset"):
        rows = read_all(tmp_path, "a.tar")
    assert [row["id"] for row in rows] == [
        "a.tar/dir/.hidden.jpg",
        "a.tar/README",
        "a.tar/good",
        "a.tar/noimage",
        "a.tar/badjson",
        "a.tar/good2",
        "a.tar/.jpg",
    ]
    errors = {row["id"]: row["error"] for row in rows}
    for name in ("dir/.hidden.jpg", "README", ".jpg"):
        assert errors[f"a.tar/{name}"] == (
            f"read: tar member {name!r} belongs to no sample (WebDataset member names are <key>.<extension>)"
        )
        assert by_id_of(rows)[f"a.tar/{name}"]["image_bytes"] is None
    assert f"{tmp_path}/a.tar: skipped 2 metadata members (__*, .DS_Store, ._*)" in caplog.messages
    assert errors["a.tar/good"] is None and errors["a.tar/good2"] is None
    assert errors["a.tar/noimage"] == (
        "read: sample has no image (jpg/jpeg/png/webp) or video (mp4/webm/mov/mkv/avi) in the tar"
    )
    assert errors["a.tar/badjson"].startswith("read: bad JSON sidecar: ")
    by_id = {row["id"]: row for row in rows}
    assert by_id["a.tar/noimage"]["image_bytes"] is None
    assert json.loads(by_id["a.tar/noimage"]["fields"]) == {"a": 1, "txt": "text only"}
    assert by_id["a.tar/badjson"]["image_bytes"] is None


def test_non_object_json_sidecar_is_kept_under_json(tmp_path: Path) -> None:
    write_tar(tmp_path / "a.tar", [("k.jpg", b"img"), ("k.json", b"[1, 2]")])
    (row,) = read_all(tmp_path, "a.tar")
    assert json.loads(row["fields"]) == {"json": [1, 2]} and row["error"] is None


def member_offsets(data: bytes) -> list[tuple[int, int]]:
    """(header offset, data offset) of each member."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(member.offset, member.offset_data) for member in tar.getmembers()]


def test_truncated_tar_keeps_complete_samples_then_one_error_row(tmp_path: Path) -> None:
    data = tar_bytes(simple_samples(4))
    _, image_data = member_offsets(data)[4]  # sample s002's image
    (tmp_path / "cut.tar").write_bytes(data[: image_data + 100])
    rows = read_all(tmp_path, "cut.tar", ReadSpec(keep_columns=("txt",)))

    assert [row["id"] for row in rows] == ["cut.tar/s000", "cut.tar/s001", "cut.tar"]
    assert [row["error"] for row in rows[:2]] == [None, None]
    assert [row["txt"] for row in rows[:2]] == ["caption s0", "caption s1"]
    assert rows[2]["error"].startswith("read: cannot read tar: ReadError: unexpected end of data")
    assert "after 2 complete samples; lost from sample 's002' on" in rows[2]["error"]
    assert rows[2]["image_bytes"] is None and rows[2]["txt"] is None
    assert rows[2]["source"] == f"{tmp_path}/cut.tar"


def test_tar_cut_at_a_member_boundary_is_not_taken_as_complete(tmp_path: Path) -> None:
    data = tar_bytes(simple_samples(3))
    header, _ = member_offsets(data)[4]  # where sample s002 begins
    (tmp_path / "cut.tar").write_bytes(data[:header])
    rows = read_all(tmp_path, "cut.tar")
    # tarfile alone ends quietly here, as if the tar held two samples; s001 may have had members past the cut.
    assert [row["id"] for row in rows] == ["cut.tar/s000", "cut.tar"]
    assert "no end-of-archive block" in rows[-1]["error"] and "'s001'" in rows[-1]["error"]


@pytest.mark.parametrize("into_header", [10, 200, 511])
def test_a_cut_in_the_next_samples_header_keeps_the_complete_sample_before_it(
    tmp_path: Path, into_header: int
) -> None:
    one_member = [(f"s{index}.jpg", image_bytes(index, (16, 12), "JPEG")) for index in range(3)]
    data = tar_bytes(one_member)
    header, _ = member_offsets(data)[1]  # the 2nd member: sample s1
    (tmp_path / "cut.tar").write_bytes(data[: header + into_header])
    rows = read_all(tmp_path, "cut.tar")
    # The surviving name ('s1.jpg') says the member after s0 belongs to another sample: s0 was read whole.
    assert [row["id"] for row in rows] == ["cut.tar/s0", "cut.tar"]
    assert rows[0]["error"] is None and rows[0]["image_bytes"] == [one_member[0][1]]
    assert "(after 1 complete samples; lost from sample 's1' on)" in rows[1]["error"]

    two_members = tar_bytes(simple_samples(3))
    header, _ = member_offsets(two_members)[2]  # s001.jpg, after s000.jpg and s000.txt
    (tmp_path / "cut2.tar").write_bytes(two_members[: header + into_header])
    assert [row["id"] for row in read_all(tmp_path, "cut2.tar")] == ["cut2.tar/s000", "cut2.tar"]
    header, _ = member_offsets(two_members)[1]  # s000.txt: s000 itself is cut, so it is lost
    (tmp_path / "cut3.tar").write_bytes(two_members[: header + into_header])
    rows = read_all(tmp_path, "cut3.tar")
    assert [row["id"] for row in rows] == ["cut3.tar"]
    assert "lost from sample 's000' on" in rows[0]["error"]
    # Planning with --limit counts the same rows as reading gives.
    shards = plan_webdataset_shards(str(tmp_path / "cut.tar"), OPTIONS, limit=10)
    assert shards[0].row_limit is None and len(shards) == 1


def test_a_repeated_sample_key_is_an_error_row_of_its_own(tmp_path: Path) -> None:
    write_tar(
        tmp_path / "a.tar",
        [
            ("a.jpg", b"img a"),
            ("a.txt", b"first a"),
            ("b.jpg", b"img b"),
            ("a.jpg", b"img a again"),  # not adjacent to the first a: another sample
            ("a.txt", b"second a"),
            ("c.jpg", b"img c"),
            ("c.jpg", b"img c again"),  # the same member twice in a row
        ],
    )
    rows = read_all(tmp_path, "a.tar", ReadSpec(keep_columns=("txt",)))
    assert [row["id"] for row in rows] == ["a.tar/a", "a.tar/b", "a.tar/a#3", "a.tar/c", "a.tar/c#5"]
    assert [row["error"] for row in rows] == [
        None,
        None,
        "read: duplicate sample key 'a': sample 3 of the tar repeats sample 1 (a sample's members must be adjacent)",
        None,
        "read: duplicate sample key 'c': sample 5 of the tar repeats sample 4 (a sample's members must be adjacent)",
    ]
    assert [row["txt"] for row in rows] == ["first a", None, "second a", None, None]
    assert rows[0]["image_bytes"] == [b"img a"] and rows[2]["image_bytes"] is None
    assert rows[2]["source"] == f"{tmp_path}/a.tar#a"


def gzip_tar(path: Path, members: list[tuple[str, bytes]]) -> bytes:
    data = gzip.compress(tar_bytes(members))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def test_gzip_compressed_tars_are_planned_detected_and_read(tmp_path: Path) -> None:
    from llava_batch.pipeline.io.formats import detect_input_format

    gzip_tar(tmp_path / "in" / "a.tar.gz", simple_samples(2, "a"))
    gzip_tar(tmp_path / "in" / "b.TGZ", simple_samples(1, "b"))
    write_tar(tmp_path / "in" / "c.tar", simple_samples(1, "c"))
    root = str(tmp_path / "in")
    assert detect_input_format(root, OPTIONS) == "webdataset"
    assert detect_input_format(f"{root}/*.tar.gz", OPTIONS) == "webdataset"
    assert detect_input_format(f"{root}/{{a,b}}.tgz", OPTIONS) == "webdataset"
    shards = plan_webdataset_shards(root, OPTIONS)
    assert [shard.members for shard in shards] == [("a.tar.gz",), ("b.TGZ",), ("c.tar",)]
    rows = [row for shard in shards for row in read_webdataset_shard(shard, OPTIONS, ReadSpec())]
    assert [row["id"] for row in rows] == ["a.tar.gz/a000", "a.tar.gz/a001", "b.TGZ/b000", "c.tar/c000"]
    assert all(row["error"] is None for row in rows)
    assert json.loads(rows[1]["fields"]) == {"txt": "caption a1"}
    limited = plan_webdataset_shards(root, OPTIONS, limit=3)
    assert [(shard.members, shard.row_limit) for shard in limited] == [(("a.tar.gz",), None), (("b.TGZ",), 1)]


def test_damaged_gzip_tars_keep_their_complete_samples_and_are_not_retried(tmp_path: Path) -> None:
    data = gzip_tar(tmp_path / "whole.tar.gz", simple_samples(40))
    (tmp_path / "cut.tar.gz").write_bytes(data[: len(data) // 2])
    rows = read_all(tmp_path, "cut.tar.gz")
    assert rows[-1]["id"] == "cut.tar.gz" and rows[-1]["error"].startswith(
        "read: cannot read tar: EOFError: "
    )
    assert len(rows) > 2 and all(row["error"] is None for row in rows[:-1])
    assert [row["id"] for row in rows[:-1]] == [f"cut.tar.gz/s{index:03d}" for index in range(len(rows) - 1)]
    (tmp_path / "plain.tgz").write_bytes(tar_bytes(simple_samples(1)))  # named .tgz, not compressed
    (row,) = read_all(tmp_path, "plain.tgz")
    assert row["error"] == "read: cannot read tar: BadGzipFile: Not a gzipped file (b's0')"


def test_garbage_after_a_member_is_an_error_not_the_end(tmp_path: Path) -> None:
    data = tar_bytes(simple_samples(3))
    header, _ = member_offsets(data)[4]
    (tmp_path / "bad.tar").write_bytes(data[:header] + b"\xff" * 512 + data[header + 512 :])
    rows = read_all(tmp_path, "bad.tar")
    assert [row["id"] for row in rows] == ["bad.tar/s000", "bad.tar"]


@pytest.mark.parametrize("content", [b"", b"this is not a tar archive at all" * 40])
def test_unreadable_tar_gives_one_error_row(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.tar").write_bytes(content)
    rows = read_all(tmp_path, "bad.tar", ReadSpec(keep_columns=("txt",)))
    assert len(rows) == 1
    assert rows[0]["id"] == "bad.tar"
    assert rows[0]["error"].startswith("read: cannot read tar: ")
    assert rows[0]["image_bytes"] is None and rows[0]["txt"] is None and json.loads(rows[0]["fields"]) == {}


def test_missing_tar_gives_an_error_row(tmp_path: Path) -> None:
    (row,) = read_all(tmp_path, "gone.tar")
    assert row["error"] == "read: cannot read tar: file disappeared between listing and reading"


def test_sample_key_uses_the_first_dot_of_the_basename() -> None:
    assert sample_key("dir.v2/sample001.seg.PNG") == ("dir.v2/sample001", "seg.png")
    assert sample_key("./a/b.jpg") == ("a/b", "jpg")
    assert sample_key("a/.hidden.jpg") is None
    assert sample_key("__key__.txt") is None
    assert sample_key("LICENSE") is None


# ---------------------------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------------------------


def test_brace_expansion() -> None:
    assert expand_braces("s-{000..003}.tar") == ["s-000.tar", "s-001.tar", "s-002.tar", "s-003.tar"]
    assert expand_braces("{8..11}") == ["8", "9", "10", "11"]  # no padding without a leading zero
    assert expand_braces("{098..100}") == ["098", "099", "100"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("{0..10..5}") == ["0", "5", "10"]
    assert expand_braces("{b,a}/x{1..2}") == ["b/x1", "b/x2", "a/x1", "a/x2"]
    assert expand_braces("{a,b{0..1}}z") == ["az", "b0z", "b1z"]
    assert expand_braces("{x}-{1,2}") == ["{x}-1", "{x}-2"]  # a single word in braces is literal, as in bash
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_prefix_is_listed_recursively_sorted_and_skips_hidden_files(tmp_path: Path) -> None:
    for name in ["b/2.tar", "a/1.TAR", "c.tar", ".tmp-x.tar", "notes.txt", "a/_partial.tar"]:
        write_tar(tmp_path / "in" / name, simple_samples(1))
    shards = plan_webdataset_shards(str(tmp_path / "in"), OPTIONS)
    assert [shard.members for shard in shards] == [("a/1.TAR",), ("b/2.tar",), ("c.tar",)]
    assert {shard.root for shard in shards} == {str(tmp_path / "in")}
    assert {shard.kind for shard in shards} == {"webdataset"}
    assert [shard.shard_id for shard in shards] == [shard_id_for(shard.members) for shard in shards]
    assert all(shard.row_limit is None for shard in shards)


def test_zero_padded_brace_range_selects_those_shards_in_order(tmp_path: Path) -> None:
    for index in range(12):
        write_tar(tmp_path / "shards" / f"train-{index:03d}.tar", simple_samples(1))
    shards = plan_webdataset_shards(f"{tmp_path}/shards/train-{{002..009}}.tar", OPTIONS)
    assert [shard.members[0] for shard in shards] == [f"train-{index:03d}.tar" for index in range(2, 10)]
    assert {shard.root for shard in shards} == {f"{tmp_path}/shards"}
    # Same shard ids as planning the whole prefix: a shard is named by its tar, not by how it was selected.
    whole = {shard.members: shard.shard_id for shard in plan_webdataset_shards(f"{tmp_path}/shards", OPTIONS)}
    assert all(whole[shard.members] == shard.shard_id for shard in shards)


def test_brace_list_keeps_its_order_and_may_span_folders(tmp_path: Path) -> None:
    for name in ["x/a.tar", "y/b.tar", "y/c.tar"]:
        write_tar(tmp_path / name, simple_samples(1))
    shards = plan_webdataset_shards(f"{tmp_path}/{{y/c,x/a}}.tar", OPTIONS)
    assert [shard.members for shard in shards] == [("y/c.tar",), ("x/a.tar",)]
    assert shards[0].root == str(tmp_path)


def test_missing_brace_expanded_shards_are_an_error_naming_them(tmp_path: Path) -> None:
    for index in (0, 1, 5):
        write_tar(tmp_path / f"{index:02d}.tar", simple_samples(1))
    with pytest.raises(FileNotFoundError) as caught:
        plan_webdataset_shards(f"{tmp_path}/{{00..09}}.tar", OPTIONS)
    message = str(caught.value)
    assert "7 of the 10 names" in message
    assert f"{tmp_path}/02.tar" in message and f"{tmp_path}/06.tar" in message
    assert "and 2 more" in message and "05.tar" not in message


def test_globs_match_one_folder_level_and_tar_files_only(tmp_path: Path) -> None:
    for name in ["s/a.tar", "s/b.tar", "s/sub/c.tar", "s/d.txt", "t/e.tar"]:
        write_tar(tmp_path / name, simple_samples(1))
    top = plan_webdataset_shards(f"{tmp_path}/s/*", OPTIONS)
    assert [shard.members for shard in top] == [("a.tar",), ("b.tar",)]
    nested = plan_webdataset_shards(f"{tmp_path}/*/*.tar", OPTIONS)
    assert [shard.members for shard in nested] == [("s/a.tar",), ("s/b.tar",), ("t/e.tar",)]
    assert nested[0].root == str(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no \.tar/\.tar\.gz/\.tgz files match"):
        plan_webdataset_shards(f"{tmp_path}/s/*.zip", OPTIONS)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plan_webdataset_shards(f"{tmp_path}/nowhere/*.tar", OPTIONS)


def test_a_single_tar_file_is_one_shard(tmp_path: Path) -> None:
    write_tar(tmp_path / "one.tar", simple_samples(2))
    (shard,) = plan_webdataset_shards(str(tmp_path / "one.tar"), OPTIONS)
    assert (shard.root, shard.members) == (str(tmp_path), ("one.tar",))
    assert len(list(read_webdataset_shard(shard, OPTIONS, ReadSpec()))) == 2


def test_limit_counts_samples_from_headers_and_cuts_the_last_shard(tmp_path: Path) -> None:
    for index, count in enumerate([3, 4, 5]):
        write_tar(tmp_path / f"{index}.tar", simple_samples(count, prefix=f"t{index}-"))
    full = plan_webdataset_shards(str(tmp_path), OPTIONS)
    limited = plan_webdataset_shards(str(tmp_path), OPTIONS, limit=5)

    assert [shard.members for shard in limited] == [("0.tar",), ("1.tar",)]
    assert [shard.row_limit for shard in limited] == [None, 2]
    assert [shard.shard_id for shard in limited] == [
        shard_id_for(("0.tar",), "limit=5"),
        shard_id_for(("1.tar",), "limit=5"),
    ]
    assert not {shard.shard_id for shard in limited} & {shard.shard_id for shard in full}
    exact = plan_webdataset_shards(str(tmp_path), OPTIONS, limit=7)
    assert [shard.row_limit for shard in exact] == [None, 4]
    everything = plan_webdataset_shards(str(tmp_path), OPTIONS, limit=100)
    assert [shard.row_limit for shard in everything] == [None, None, None]

    # Through the read stage (no Ray): the row limit gives exactly `limit` rows.
    batch = {
        name: np.array([shard.to_item()[name] for shard in limited], dtype=object)
        for name in limited[0].to_item()
    }
    out = read_shards(batch, options=OPTIONS, spec=ReadSpec())
    assert list(out["id"]) == ["0.tar/t0-000", "0.tar/t0-001", "0.tar/t0-002", "1.tar/t1-000", "1.tar/t1-001"]
    assert list(out["shard_rows"]) == [3, 3, 3, 2, 2]


def test_limit_counts_a_broken_tar_as_one_row(tmp_path: Path) -> None:
    (tmp_path / "0.tar").write_bytes(b"garbage" * 100)
    write_tar(tmp_path / "1.tar", simple_samples(3))
    shards = plan_webdataset_shards(str(tmp_path), OPTIONS, limit=2)
    assert [(shard.members, shard.row_limit) for shard in shards] == [(("0.tar",), None), (("1.tar",), 1)]


# ---------------------------------------------------------------------------------------------------------------
# Against a real S3 server
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_reads_tars_from_s3_through_a_brace_pattern(seaweedfs, s3_bucket, monkeypatch) -> None:
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    fs = seaweedfs.fs()
    for index in range(3):
        fs.pipe(f"{s3_bucket}/wds/shard-{index:04d}.tar", tar_bytes(simple_samples(2, prefix=f"k{index}-")))
    fs.pipe(f"{s3_bucket}/wds/notes.txt", b"not a shard")

    shards = plan_webdataset_shards(f"s3://{s3_bucket}/wds/shard-{{0001..0002}}.tar", StorageOptions())
    assert [shard.members for shard in shards] == [("shard-0001.tar",), ("shard-0002.tar",)]
    assert shards[0].root == f"s3://{s3_bucket}/wds"
    rows = list(read_webdataset_shard(shards[1], StorageOptions(), ReadSpec(keep_columns=("txt",))))
    assert [row["id"] for row in rows] == ["shard-0002.tar/k2-000", "shard-0002.tar/k2-001"]
    assert rows[0]["source"] == f"s3://{s3_bucket}/wds/shard-0002.tar#k2-000"
    assert rows[1]["txt"] == "caption k2-1" and rows[1]["error"] is None
    assert rows[0]["image_bytes"] == [image_bytes(0, (16, 12), "JPEG")]

    limited = plan_webdataset_shards(f"s3://{s3_bucket}/wds", StorageOptions(), limit=3)
    assert [(shard.members, shard.row_limit) for shard in limited] == [
        (("shard-0000.tar",), None),
        (("shard-0001.tar",), 1),
    ]
    with pytest.raises(FileNotFoundError, match="shard-0007.tar"):
        plan_webdataset_shards(f"s3://{s3_bucket}/wds/shard-{{0000..0007}}.tar", StorageOptions())
