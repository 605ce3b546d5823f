"""Parquet reader: planning (prefixes, globs, --limit from footers) and rows with their images, no Ray."""

from __future__ import annotations

import datetime
import decimal
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llava_batch.pipeline.io.formats.parquet import (
    IMAGE_COLUMN_NAMES,
    plan_parquet_shards,
    read_parquet_shard,
)
from llava_batch.pipeline.io.shards import ReadSpec, Shard, shard_id_for
from llava_batch.pipeline.io.storage import StorageOptions
from tests.support.images import image_bytes

OPTIONS = StorageOptions()
IMAGES = [image_bytes(index, (12 + index, 10), "PNG") for index in range(6)]


def write_table(path: Path, columns: dict[str, list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def read_all(
    root: Path | str, relative: str, spec: ReadSpec | None = None, row_limit: int | None = None
) -> list[dict]:
    shard = Shard(shard_id_for((relative,)), str(root), (relative,), "parquet", row_limit)
    return list(read_parquet_shard(shard, OPTIONS, spec or ReadSpec()))


# ---------------------------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------------------------


def test_binary_column_rows_with_default_ids_sources_and_fields(tmp_path: Path) -> None:
    write_table(
        tmp_path / "data" / "part-0.parquet",
        {
            "caption": ["first", "second", "third"],
            "image": IMAGES[:3],
            "thumbnail": [b"t0", b"t1", b"t2"],  # another bytes column: neither read into fields nor kept
            "score": [0.5, float("nan"), 2.0],
        },
    )
    rows = read_all(tmp_path / "data", "part-0.parquet")
    assert [row["id"] for row in rows] == ["part-0.parquet#0", "part-0.parquet#1", "part-0.parquet#2"]
    assert [row["source"] for row in rows] == [
        f"{tmp_path}/data/part-0.parquet#{index}" for index in range(3)
    ]
    assert [row["image_bytes"] for row in rows] == [[IMAGES[0]], [IMAGES[1]], [IMAGES[2]]]
    assert [json.loads(row["fields"]) for row in rows] == [
        {"caption": "first", "score": 0.5},
        {"caption": "second", "score": None},  # NaN is not JSON
        {"caption": "third", "score": 2.0},
    ]
    assert all(row["error"] is None for row in rows)


def test_id_column_and_keep_columns(tmp_path: Path) -> None:
    write_table(
        tmp_path / "t.parquet",
        {"key": ["a", "", None, "7"], "img": IMAGES[:4], "label": ["x", "y", "z", "w"]},
    )
    rows = read_all(tmp_path, "t.parquet", ReadSpec(id_column="key", keep_columns=("label",)))
    assert [row["id"] for row in rows] == ["a", "t.parquet#1", "t.parquet#2", "7"]
    assert [row["error"] for row in rows] == [
        None,
        "read: id column 'key' is empty",
        "read: id column 'key' is null",
        None,
    ]
    assert [row["label"] for row in rows] == ["x", "y", "z", "w"]
    assert rows[1]["image_bytes"] is None and rows[3]["image_bytes"] == [IMAGES[3]]
    assert json.loads(rows[0]["fields"]) == {"key": "a", "label": "x"}


def test_integer_ids_are_stringified(tmp_path: Path) -> None:
    write_table(tmp_path / "t.parquet", {"row": [10, 11], "image": IMAGES[:2]})
    rows = read_all(tmp_path, "t.parquet", ReadSpec(id_column="row"))
    assert [row["id"] for row in rows] == ["10", "11"]


def test_path_column_relative_absolute_and_missing(tmp_path: Path) -> None:
    (tmp_path / "data" / "imgs").mkdir(parents=True)
    (tmp_path / "data" / "imgs" / "a.png").write_bytes(IMAGES[0])
    (tmp_path / "elsewhere.png").write_bytes(IMAGES[1])
    write_table(
        tmp_path / "data" / "index.parquet",
        {"image_path": ["imgs/a.png", str(tmp_path / "elsewhere.png"), "imgs/missing.png", None, ""]},
    )
    rows = read_all(tmp_path / "data", "index.parquet")
    assert rows[0]["image_bytes"] == [IMAGES[0]] and rows[0]["error"] is None
    assert rows[0]["source"] == f"{tmp_path}/data/imgs/a.png"
    assert rows[1]["image_bytes"] == [IMAGES[1]] and rows[1]["source"] == str(tmp_path / "elsewhere.png")
    assert rows[2]["image_bytes"] is None
    missing = f"{tmp_path}/data/imgs/missing.png"
    assert (
        rows[2]["error"] == f"read: image in column 'image_path' names a file that does not exist: {missing}"
    )
    assert rows[2]["source"] == f"{tmp_path}/data/index.parquet#2"
    assert rows[3]["error"] == "read: image in column 'image_path' is null"
    assert rows[4]["error"] == "read: image in column 'image_path' is an empty path"
    assert json.loads(rows[0]["fields"]) == {}  # the image column itself is not a field


def test_null_binary_image_is_an_error_row(tmp_path: Path) -> None:
    write_table(tmp_path / "t.parquet", {"image": [IMAGES[0], None, b""], "caption": ["a", "b", "c"]})
    rows = read_all(tmp_path, "t.parquet", ReadSpec(keep_columns=("caption",)))
    assert [row["error"] for row in rows] == [
        None,
        "read: image in column 'image' is null",
        "read: image in column 'image' is empty",
    ]
    assert [row["image_bytes"] for row in rows] == [[IMAGES[0]], None, None]
    assert [row["caption"] for row in rows] == ["a", "b", "c"]


def test_hugging_face_image_struct_with_bytes_or_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    datasets = pytest.importorskip("datasets")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "on-disk.png").write_bytes(IMAGES[1])
    dataset = datasets.Dataset.from_dict(
        {
            "image": [
                {"bytes": IMAGES[0], "path": None},
                {"bytes": None, "path": "on-disk.png"},  # relative to the Parquet file's folder
                None,
            ],
            "caption": ["embedded", "by path", "none"],
        }
    ).cast_column("image", datasets.Image())
    monkeypatch.chdir(tmp_path / "hf")  # `datasets` sizes path-only images while writing, relative to the cwd
    dataset.to_parquet(str(tmp_path / "hf" / "train.parquet"))
    assert pq.read_schema(tmp_path / "hf" / "train.parquet").field("image").type == pa.struct(
        [("bytes", pa.binary()), ("path", pa.string())]
    )

    rows = read_all(tmp_path / "hf", "train.parquet")
    assert [row["image_bytes"] for row in rows] == [[IMAGES[0]], [IMAGES[1]], None]
    assert [row["source"] for row in rows] == [
        f"{tmp_path}/hf/train.parquet#0",
        f"{tmp_path}/hf/on-disk.png",
        f"{tmp_path}/hf/train.parquet#2",
    ]
    assert rows[2]["error"] == "read: image in column 'image' is null"
    assert [json.loads(row["fields"]) for row in rows] == [
        {"caption": "embedded"},
        {"caption": "by path"},
        {"caption": "none"},
    ]


def test_list_of_images_keeps_order(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"images": datasets.Sequence(datasets.Image()), "n": datasets.Value("int64")}
    )
    dataset = datasets.Dataset.from_dict(
        {"images": [[IMAGES[2], IMAGES[0], IMAGES[1]], [IMAGES[3]], []], "n": [3, 1, 0]}, features=features
    )
    dataset.to_parquet(str(tmp_path / "multi.parquet"))
    rows = read_all(tmp_path, "multi.parquet")
    assert rows[0]["image_bytes"] == [IMAGES[2], IMAGES[0], IMAGES[1]]
    assert rows[1]["image_bytes"] == [IMAGES[3]]
    assert rows[2]["error"] == "read: image list in column 'images' is empty"
    assert json.loads(rows[0]["fields"]) == {"n": 3}


def test_list_of_binaries_and_of_paths(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(IMAGES[4])
    write_table(
        tmp_path / "t.parquet",
        {
            "pictures": [[IMAGES[0], IMAGES[1]], [IMAGES[2], None]],
            "refs": [["a.png", "a.png"], ["a.png", "nope.png"]],
        },
    )
    rows = read_all(tmp_path, "t.parquet", ReadSpec(image_column="pictures"))
    assert rows[0]["image_bytes"] == [IMAGES[0], IMAGES[1]]
    assert rows[1]["error"] == "read: image 2 of 2 in column 'pictures' is null"
    # String lists are plain fields unless they are the image column.
    assert json.loads(rows[0]["fields"]) == {"refs": ["a.png", "a.png"]}

    by_path = read_all(tmp_path, "t.parquet", ReadSpec(image_column="refs"))
    assert by_path[0]["image_bytes"] == [IMAGES[4], IMAGES[4]]
    assert by_path[0]["source"] == f"{tmp_path}/t.parquet#0"  # two images: the row, not one path
    assert by_path[1]["error"].startswith(
        "read: image 2 of 2 in column 'refs' names a file that does not exist"
    )


def test_image_column_auto_detection(tmp_path: Path) -> None:
    write_table(tmp_path / "named.parquet", {"caption": ["c"], "url": ["x.png"], "jpg": [IMAGES[0]]})
    (tmp_path / "x.png").write_bytes(IMAGES[5])
    # "jpg" comes before "url" in the preference list.
    assert read_all(tmp_path, "named.parquet")[0]["image_bytes"] == [IMAGES[0]]

    write_table(tmp_path / "unnamed.parquet", {"caption": ["c"], "pixels": [IMAGES[1]]})
    assert read_all(tmp_path, "unnamed.parquet")[0]["image_bytes"] == [IMAGES[1]]

    write_table(tmp_path / "none.parquet", {"caption": ["c", "d"], "width": [3, 4]})
    rows = read_all(tmp_path, "none.parquet")
    assert [row["id"] for row in rows] == ["none.parquet#0", "none.parquet#1"]
    assert rows[1]["error"] == (
        f"read: {tmp_path}/none.parquet has no image column (none given; tried {list(IMAGE_COLUMN_NAMES)}, "
        "then any binary or {bytes, path} column); its columns: ['caption', 'width']. Pass --image-column."
    )


def test_a_file_whose_columns_do_not_fit_gives_one_error_row_per_row(tmp_path: Path) -> None:
    write_table(tmp_path / "t.parquet", {"image": IMAGES[:3], "caption": ["a", "b", "c"]})
    file_uri = f"{tmp_path}/t.parquet"
    columns = "its columns: ['image', 'caption']"
    for spec, error in [
        (
            ReadSpec(keep_columns=("caption", "nope")),
            f"{file_uri} has no column(s) ['nope'] (keep_columns); {columns}",
        ),
        (ReadSpec(id_column="uid"), f"{file_uri} has no column 'uid' (id_column); {columns}"),
        (ReadSpec(image_column="photo"), f"{file_uri} has no column 'photo' (image_column); {columns}"),
    ]:
        rows = read_all(tmp_path, "t.parquet", spec)
        assert [row["id"] for row in rows] == ["t.parquet#0", "t.parquet#1", "t.parquet#2"]
        assert [row["error"] for row in rows] == [f"read: {error}"] * 3
        assert [row["source"] for row in rows] == [f"{file_uri}#{index}" for index in range(3)]
        assert all(row["image_bytes"] is None for row in rows)
    write_table(tmp_path / "ints.parquet", {"image": [1, 2, 3, 4]})
    rows = read_all(tmp_path, "ints.parquet", row_limit=3)
    assert [row["id"] for row in rows] == ["ints.parquet#0", "ints.parquet#1", "ints.parquet#2"]
    assert rows[0]["error"] == (
        f"read: column 'image' of {tmp_path}/ints.parquet is int64, not bytes/struct/path/list "
        "(binary image data, {bytes, path} structs, path/URI strings, or lists of these)"
    )


def test_duplicate_and_null_ids_become_error_rows_with_ids_of_their_own(tmp_path: Path) -> None:
    write_table(
        tmp_path / "t.parquet",
        {"key": ["x", "y", "x", None, "t.parquet#3", "x", None], "image": IMAGES[:6] + [IMAGES[0]]},
    )
    rows = read_all(tmp_path, "t.parquet", ReadSpec(id_column="key"))
    assert [row["id"] for row in rows] == [
        "x",
        "y",
        "t.parquet#2",
        "t.parquet#3",
        "t.parquet#4",  # its own id was taken by the null id of row 3
        "t.parquet#5",
        "t.parquet#6",
    ]
    assert [row["error"] for row in rows] == [
        None,
        None,
        "read: duplicate id 'x' (also row 0)",
        "read: id column 'key' is null",
        "read: duplicate id 't.parquet#3' (also row 3)",
        "read: duplicate id 'x' (also row 0)",
        "read: id column 'key' is null",
    ]
    assert rows[0]["image_bytes"] == [IMAGES[0]] and rows[2]["image_bytes"] is None
    assert rows[2]["source"] == f"{tmp_path}/t.parquet#2"


def test_fields_are_json_safe(tmp_path: Path) -> None:
    write_table(
        tmp_path / "t.parquet",
        {
            "image": [IMAGES[0]],
            "when": [datetime.datetime(2026, 1, 2, 3, 4, 5)],
            "price": pa.array([decimal.Decimal("1.25")], pa.decimal128(5, 2)),
            "tags": [["a", "b"]],
            "meta": [{"k": 1, "inf": float("inf")}],
        },
    )
    (row,) = read_all(tmp_path, "t.parquet")
    assert json.loads(row["fields"]) == {
        "when": "2026-01-02T03:04:05",
        "price": "1.25",
        "tags": ["a", "b"],
        "meta": {"k": 1, "inf": None},
    }


def test_row_limit_stops_reading_early(tmp_path: Path) -> None:
    write_table(tmp_path / "t.parquet", {"image": IMAGES})
    rows = read_all(tmp_path, "t.parquet", row_limit=2)
    assert [row["id"] for row in rows] == ["t.parquet#0", "t.parquet#1"]


def test_unreadable_file_gives_one_error_row(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all, no magic bytes here" * 10)
    rows = read_all(tmp_path, "bad.parquet", ReadSpec(keep_columns=("caption",)))
    assert len(rows) == 1
    assert rows[0]["id"] == "bad.parquet"
    assert rows[0]["error"].startswith("read: cannot read Parquet file: ")
    assert rows[0]["caption"] is None


# ---------------------------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------------------------


def test_prefix_is_listed_recursively_sorted_skipping_hidden_files(tmp_path: Path) -> None:
    for name in ["b/1.parquet", "a/2.parquet", "c.PARQUET", "_SUCCESS", ".tmp-x-c.parquet", "a/_metadata"]:
        write_table(tmp_path / "in" / name, {"image": [IMAGES[0]]})
    shards = plan_parquet_shards(str(tmp_path / "in"), OPTIONS)
    assert [shard.members for shard in shards] == [("a/2.parquet",), ("b/1.parquet",), ("c.PARQUET",)]
    assert {(shard.root, shard.kind, shard.row_limit) for shard in shards} == {
        (str(tmp_path / "in"), "parquet", None)
    }
    assert [shard.shard_id for shard in shards] == [shard_id_for(shard.members) for shard in shards]


def test_glob_and_brace_patterns(tmp_path: Path) -> None:
    for name in ["train-00.parquet", "train-01.parquet", "test-00.parquet", "sub/train-02.parquet"]:
        write_table(tmp_path / name, {"image": [IMAGES[0]]})
    globbed = plan_parquet_shards(f"{tmp_path}/train-*.parquet", OPTIONS)
    assert [shard.members for shard in globbed] == [("train-00.parquet",), ("train-01.parquet",)]
    braced = plan_parquet_shards(f"{tmp_path}/{{test,train}}-00.parquet", OPTIONS)
    assert [shard.members for shard in braced] == [("test-00.parquet",), ("train-00.parquet",)]
    with pytest.raises(FileNotFoundError, match="train-03.parquet"):
        plan_parquet_shards(f"{tmp_path}/train-{{00..03}}.parquet", OPTIONS)


def test_limit_reads_footers_and_cuts_the_last_file(tmp_path: Path) -> None:
    for index, count in enumerate([3, 4, 5]):
        write_table(tmp_path / f"{index}.parquet", {"image": IMAGES[:count]})
    full = plan_parquet_shards(str(tmp_path), OPTIONS)
    limited = plan_parquet_shards(str(tmp_path), OPTIONS, limit=5)
    assert [(shard.members, shard.row_limit) for shard in limited] == [
        (("0.parquet",), None),
        (("1.parquet",), 2),
    ]
    assert [shard.shard_id for shard in limited] == [
        shard_id_for(("0.parquet",), "limit=5"),
        shard_id_for(("1.parquet",), "limit=5"),
    ]
    assert not {shard.shard_id for shard in limited} & {shard.shard_id for shard in full}
    rows = list(read_parquet_shard(limited[1], OPTIONS, ReadSpec()))
    assert [row["id"] for row in rows] == ["1.parquet#0", "1.parquet#1"]
    with pytest.raises(ValueError, match="limit"):
        plan_parquet_shards(str(tmp_path), OPTIONS, limit=0)


# ---------------------------------------------------------------------------------------------------------------
# Against a real S3 server
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.integration
def test_reads_parquet_and_relative_image_paths_from_s3(seaweedfs, s3_bucket, monkeypatch) -> None:
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    fs = seaweedfs.fs()
    fs.pipe(f"{s3_bucket}/tables/images/a.png", IMAGES[0])
    fs.pipe(f"{s3_bucket}/other/b.png", IMAGES[1])
    for part in range(2):
        table = pa.table(
            {
                "uid": [f"p{part}-0", f"p{part}-1", f"p{part}-2"],
                "image_path": ["images/a.png", f"s3://{s3_bucket}/other/b.png", "images/missing.png"],
                "caption": ["rel", "abs", "gone"],
            }
        )
        with fs.open(f"{s3_bucket}/tables/part-{part}.parquet", "wb") as handle:
            pq.write_table(table, handle)

    shards = plan_parquet_shards(f"s3://{s3_bucket}/tables", StorageOptions())
    assert [shard.members for shard in shards] == [("part-0.parquet",), ("part-1.parquet",)]
    spec = ReadSpec(id_column="uid", keep_columns=("caption",))
    rows = list(read_parquet_shard(shards[1], StorageOptions(), spec))
    assert [row["id"] for row in rows] == ["p1-0", "p1-1", "p1-2"]
    assert [row["image_bytes"] for row in rows] == [[IMAGES[0]], [IMAGES[1]], None]
    assert [row["source"] for row in rows] == [
        f"s3://{s3_bucket}/tables/images/a.png",
        f"s3://{s3_bucket}/other/b.png",
        f"s3://{s3_bucket}/tables/part-1.parquet#2",
    ]
    assert rows[2]["error"].startswith("read: image in column 'image_path' names a file that does not exist")
    assert [row["caption"] for row in rows] == ["rel", "abs", "gone"]

    limited = plan_parquet_shards(f"s3://{s3_bucket}/tables/*.parquet", StorageOptions(), limit=4)
    assert [(shard.members, shard.row_limit) for shard in limited] == [
        (("part-0.parquet",), None),
        (("part-1.parquet",), 1),
    ]
