"""Exactly once: a driver killed with SIGKILL mid-run, then the same command again, leaves every id exactly once;
shards committed before the kill are kept, not redone. New inputs on a later run are the only work done."""

import io
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest

from llava_batch.cli.main import main
from tests.support.images import image_bytes

pytestmark = pytest.mark.integration

IMAGES = 40
FILES_PER_SHARD = 2


def caption_argv(source: str, output: str, model: str) -> list[str]:
    return [
        "caption", "--input", source, "--output", output, "--model", model,
        # One row per generate call and a long-ish output keep the run going long enough to be killed mid-way.
        "--max-new-tokens", "32", "--batch-size", "1", "--length-window", "1",
        "--files-per-shard", str(FILES_PER_SHARD),
    ]  # fmt: skip


def run_and_kill(argv: list[str], count_parts, env: dict[str, str], before_kill=None) -> int:
    """Start the CLI as its own process group and SIGKILL the driver as soon as a shard is committed (after
    `before_kill()`, if given); returns how many parts existed just before the kill."""
    process = subprocess.Popen(
        [sys.executable, "-m", "llava_batch.cli.main", *argv],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while (committed_at_kill := count_parts()) < 1:
            assert process.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "no shard was committed in time"
            time.sleep(0.02)
        if before_kill is not None:
            before_kill()
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        # The driver is gone; its local Ray's processes must not linger into the next run.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return committed_at_kill


@pytest.mark.slow  # a driver in a subprocess with its own Ray, killed, then resumed
def test_kill_and_resume_local(tmp_path, tiny_models, capsys):
    source, output = tmp_path / "images", tmp_path / "captions"
    source.mkdir()
    for index in range(IMAGES):
        (source / f"img-{index:03d}.png").write_bytes(image_bytes(index, (40 + index, 30)))
    argv = caption_argv(str(source), str(output), str(tiny_models["llava"]))

    def parts() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in output.glob("part-*.parquet")} if output.exists() else {}

    killed_at = run_and_kill(argv, lambda: len(list(output.glob("part-*.parquet"))), dict(os.environ))
    assert killed_at < IMAGES // FILES_PER_SHARD, "the kill came after the whole job had finished"
    before = parts()
    assert all(name.startswith("part-") for name in before)

    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert f"already committed {len(before)} shard(s)" in summary
    ids = pq.read_table(output).column("id").to_pylist()
    assert sorted(ids) == sorted(f"img-{index:03d}.png" for index in range(IMAGES))
    assert len(ids) == len(set(ids))
    after = parts()
    assert {name: after[name] for name in before} == before, "committed shards must not be rewritten"
    assert not [p for p in output.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.slow
def test_kill_and_resume_s3(tiny_models, seaweedfs, s3_bucket, monkeypatch, capsys):
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    fs = seaweedfs.fs()
    for index in range(IMAGES):
        fs.pipe(f"{s3_bucket}/images/img-{index:03d}.png", image_bytes(index, (40 + index, 30)))
    argv = caption_argv(f"s3://{s3_bucket}/images/", f"s3://{s3_bucket}/captions/", str(tiny_models["llava"]))

    def parts() -> list[str]:
        fs.invalidate_cache()
        try:
            return [
                name for name in fs.ls(f"{s3_bucket}/captions") if name.rsplit("/", 1)[-1].startswith("part-")
            ]
        except FileNotFoundError:
            return []

    killed_at = run_and_kill(argv, lambda: len(parts()), dict(os.environ))
    assert killed_at < IMAGES // FILES_PER_SHARD
    assert main(argv) == 0
    assert "already committed" in capsys.readouterr().out
    ids = []
    for name in parts():
        ids.extend(pq.read_table(io.BytesIO(fs.cat(name))).column("id").to_pylist())
    assert sorted(ids) == sorted(f"img-{index:03d}.png" for index in range(IMAGES))


def test_incremental_run_processes_only_new_shards(tmp_path, tiny_models, capsys):
    source, output = tmp_path / "images", tmp_path / "captions"
    (source / "2026-11-23").mkdir(parents=True)
    for index in range(6):
        (source / "2026-11-23" / f"a{index}.png").write_bytes(image_bytes(index, (40, 30)))
    argv = caption_argv(str(source), str(output), str(tiny_models["llava"]))
    assert main(argv) == 0
    first = {p.name: p.stat().st_mtime_ns for p in output.glob("part-*.parquet")}
    assert len(first) == 3
    capsys.readouterr()

    (source / "2026-11-24").mkdir()
    for index in range(4):
        (source / "2026-11-24" / f"b{index}.png").write_bytes(image_bytes(10 + index, (40, 30)))
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert "rows written      4" in summary and "already committed 3 shard(s), 6 rows" in summary
    second = {p.name: p.stat().st_mtime_ns for p in output.glob("part-*.parquet")}
    assert {name: second[name] for name in first} == first, "old shards untouched"
    assert len(second) == 5
    ids = pq.read_table(output).column("id").to_pylist()
    assert sorted(ids) == sorted(
        [f"2026-11-23/a{i}.png" for i in range(6)] + [f"2026-11-24/b{i}.png" for i in range(4)]
    )
