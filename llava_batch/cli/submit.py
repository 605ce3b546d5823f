"""Run a job file on a Ray cluster through Ray's Job Submission API (the head's dashboard, `ray[default]`).

The config travels in the job's runtime_env `working_dir` (a folder holding only `job.yaml`), so the cluster
never needs the submitter's files. The package itself is expected on the cluster (cluster.yaml installs it on
every node); `ship_code=True` also sends this checkout's `pipeline`, `jobs` and `operators` as `py_modules`,
which take precedence over the installed copy (for trying a change without re-running `ray up`).
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import socket
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llava_batch.cli.job_files import load_job_file
from llava_batch.pipeline.config import ConfigError

logger = logging.getLogger(__name__)

ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"  # the variable Ray's own `ray job` CLI reads first
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
CONNECT_TIMEOUT_S = 10.0
SHIPPED_PACKAGES = ("pipeline", "jobs", "operators")
CONFIG_NAME = "job.yaml"


class ClusterUnreachable(RuntimeError):
    """The dashboard at the given address does not answer."""


def resolve_address(address: str | None) -> str:
    address = address or os.environ.get(ADDRESS_ENV) or ""
    if not address:
        raise ConfigError(
            f"address: no cluster given; pass --address http://HEAD:8265 (the head's dashboard) or set {ADDRESS_ENV}"
        )
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(
            f"address: {address!r} is not a dashboard URL; use http://HEAD:8265 (`ray dashboard cluster.yaml` "
            "forwards it to http://127.0.0.1:8265)"
        )
    return address.rstrip("/")


def job_client(address: str | None) -> Any:
    """A JobSubmissionClient, after checking within seconds that the dashboard's port answers at all
    (Ray's client has no connect timeout: a firewalled address would hang for minutes)."""
    address = resolve_address(address)
    parsed = urlparse(address)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    hint = (
        "check that the head is running with its dashboard (`ray start --head` with ray[default] installed) and "
        "that the address is right; from your laptop, `ray dashboard cluster.yaml` forwards it to "
        "http://127.0.0.1:8265"
    )
    try:
        socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ClusterUnreachable(f"cannot reach the Ray dashboard at {address}: {error}; {hint}") from None
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError as error:
        raise ConfigError(f"address: the Job Submission API needs ray[default] ({error})") from None
    import requests

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, requests.RequestException) as error:
        raise ClusterUnreachable(f"the Ray dashboard at {address} did not answer: {error}; {hint}") from None


def server_error(error: Exception) -> bool:
    """Ray's client reports an HTTP 5xx as `RuntimeError("Request failed with status code 5xx: ...")`."""
    return re.search(r"status code 5\d\d", str(error)) is not None


def unavailable(address: str, error: Exception) -> ClusterUnreachable:
    # "No available agent to submit job": the dashboard is up but its job agent is not (yet), e.g. right after
    # `ray start --head`, or on a head without the agent's dependencies.
    return ClusterUnreachable(
        f"the Ray dashboard at {address} answered but cannot run jobs now ({error}); its job agent may still be "
        "starting (retry in a minute) or may have failed (see dashboard_agent.log on the head)"
    )


def entrypoint_for(config_name: str = CONFIG_NAME) -> str:
    # `run` takes the job from the file's `job:` key. Every piece is quoted: Ray runs the entrypoint through a
    # shell on the head.
    return " ".join(shlex.quote(part) for part in ("llava-batch", "run", "--config", config_name))


def submit(config_path: str | os.PathLike, address: str | None, *, ship_code: bool = False) -> str:
    """Validate the job file here, submit it, return the job id."""
    job_file = load_job_file(config_path)  # settings errors show up here, not on the cluster
    client = job_client(address)
    staging = Path(tempfile.mkdtemp(prefix="llava-batch-submit-"))
    try:
        shutil.copyfile(job_file.path, staging / CONFIG_NAME)
        runtime_env: dict[str, Any] = {"working_dir": str(staging)}
        if ship_code:
            root = Path(__file__).resolve().parents[1]
            runtime_env["py_modules"] = [str(root / name) for name in SHIPPED_PACKAGES]
        # Ray uploads working_dir during submit_job, so the staging folder can go right after.
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint_for(),
                submission_id=f"llava-batch-{job_file.job}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
                runtime_env=runtime_env,
                metadata={"job": job_file.job, "config": job_file.path.name},
            )
        except RuntimeError as error:
            if server_error(error):
                raise unavailable(client.get_address(), error) from None
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("submitted %s as %s to %s", job_file.path, job_id, client.get_address())
    return job_id


def job_status(job_id: str, address: str | None) -> tuple[str, str]:
    """(status, Ray's message) of a submitted job."""
    info = _for_job(job_id, address, lambda client: client.get_job_info(job_id))
    return _name(info.status), info.message or ""


def job_logs(job_id: str, address: str | None) -> str:
    return _for_job(job_id, address, lambda client: client.get_job_logs(job_id))


def wait_for_job(
    job_id: str, address: str | None, *, timeout_s: float | None = None, poll_s: float = 2.0
) -> str:
    """Poll until the job ends; returns its final status (TimeoutError after `timeout_s`)."""
    client = job_client(address)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = _name(_for_job(job_id, address, lambda client: client.get_job_status(job_id), client))
        if status in TERMINAL_STATUSES:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def _name(status: Any) -> str:
    """JobStatus is a str enum; its value is the name users see in `ray job status`."""
    return str(getattr(status, "value", status))


def _for_job(job_id: str, address: str | None, call: Any, client: Any = None) -> Any:
    """Ray answers an unknown job id with a RuntimeError carrying the HTTP 404; say it in our words."""
    client = client or job_client(address)
    try:
        return call(client)
    except RuntimeError as error:
        if "404" in str(error) or "does not exist" in str(error):
            raise ConfigError(
                f"job_id: no job {job_id!r} on {client.get_address()}; `ray job list --address "
                f"{client.get_address()}` lists them"
            ) from None
        if server_error(error):
            raise unavailable(client.get_address(), error) from None
        raise
