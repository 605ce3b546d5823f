"""Run a job file on a Ray cluster through Ray's Job Submission API (the head's dashboard, `ray[default]`).

The config travels in the job's runtime_env `working_dir` (a folder holding `job.yaml`, plus the caller's own
working_dir if they gave one), so the cluster never needs the submitter's files. The package itself is expected
on the cluster (cluster.yaml installs it on every node, an image does on Kubernetes); `ship_code=True` builds a
wheel of this checkout (`pip wheel --no-deps`) and sends it in the working_dir as a `pip` dependency of the
job's runtime_env, which Ray installs into a virtualenv over the cluster's packages (for trying a change
without rebuilding the image or re-running `ray up`). A caller's runtime_env (a YAML/JSON file, pip packages,
env vars) is merged in.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llava_batch.cli.job_files import load_job_file
from llava_batch.pipeline.config import ConfigError

logger = logging.getLogger(__name__)

ADDRESS_ENV = "RAY_API_SERVER_ADDRESS"  # the variable Ray's own `ray job` CLI reads first
TERMINAL_STATUSES = ("SUCCEEDED", "FAILED", "STOPPED")
CONNECT_TIMEOUT_S = 10.0
CONFIG_NAME = "job.yaml"
WHEELS_DIR = "wheels"
# Ray puts the unpacked working_dir here before it installs the pip packages (ray._private.runtime_env.pip).
WORKING_DIR_VAR = "${RAY_RUNTIME_ENV_CREATE_WORKING_DIR}"


# How long `submit` waits for a head's job agent that is still starting ("No available agent to submit job").
AGENT_WAIT_S = 60.0
AGENT_RETRY_S = 3.0


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


@dataclass(frozen=True)
class RuntimeEnvOptions:
    """What the caller adds to the job's runtime_env: a file, pip packages, env vars, a working_dir to ship."""

    file: str | None = None
    pip: tuple[str, ...] = ()
    env_vars: dict[str, str] = field(default_factory=dict)
    working_dir: str | None = None
    ship_code: bool = False


def load_runtime_env_file(path: str) -> dict[str, Any]:
    """A runtime_env as YAML or JSON (JSON is YAML); ConfigError naming the file when it is not a mapping."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"runtime_env: cannot read {path!r} ({error.strerror or error})") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(
            f"runtime_env: {path!r} is not valid YAML or JSON ({' '.join(str(error).split())})"
        ) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"runtime_env: {path!r} must hold a mapping (working_dir, pip, env_vars, ...), not {type(loaded).__name__}"
        )
    return loaded


def parse_env_vars(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`NAME=VALUE` flags -> a dict; ConfigError for one without `=` or with an empty name."""
    env: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise ConfigError(f"env: {pair!r} is not NAME=VALUE")
        env[name] = value
    return env


def build_runtime_env(staging: Path, options: RuntimeEnvOptions, wheel: Path | None = None) -> dict[str, Any]:
    """The job's runtime_env: the caller's file, then their flags on top; the staging folder (job.yaml, the
    caller's working_dir copied in, the shipped wheel) is the working_dir Ray uploads."""
    runtime_env = load_runtime_env_file(options.file) if options.file else {}
    # A working_dir is copied into the staging folder, which becomes the working_dir that Ray uploads.
    working_dir = options.working_dir or runtime_env.pop("working_dir", None)
    if working_dir is not None:
        if "://" in str(working_dir):
            raise ConfigError(
                f"working_dir: {working_dir!r} is a remote URI; submit copies a local folder beside the job file "
                "(pass a local folder, or put the remote one in py_modules)"
            )
        if not Path(working_dir).is_dir():
            raise ConfigError(f"working_dir: {working_dir!r} is not a folder")
        shutil.copytree(
            working_dir, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".git", "__pycache__")
        )
        if (staging / CONFIG_NAME).exists() and working_dir:
            logger.warning("working_dir %s holds a %s; the job file replaces it", working_dir, CONFIG_NAME)
    runtime_env["working_dir"] = str(staging)
    pip = runtime_env.get("pip")
    packages: list[str]
    if pip is None:
        packages, pip_options = [], {}
    elif isinstance(pip, list):
        packages, pip_options = list(pip), {}
    elif isinstance(pip, dict):
        packages = list(pip.get("packages", []))
        pip_options = {key: value for key, value in pip.items() if key != "packages"}
    else:
        raise ConfigError(
            f"runtime_env: pip must be a list of packages or a mapping with `packages`, not {pip!r}"
        )
    packages += list(options.pip)
    if wheel is not None:
        # The working_dir is unpacked before pip runs; the wheel's dependencies come from the cluster's packages
        # (the virtualenv sees them) or, where missing, from the index.
        packages.append(f"{WORKING_DIR_VAR}/{WHEELS_DIR}/{wheel.name}")
    if packages:
        runtime_env["pip"] = {"packages": packages, **pip_options} if pip_options else packages
    env_vars = dict(runtime_env.get("env_vars") or {})
    env_vars.update(options.env_vars)
    if env_vars:
        runtime_env["env_vars"] = {name: str(value) for name, value in env_vars.items()}
    return runtime_env


def build_wheel(destination: Path) -> Path:
    """A wheel of this checkout (`pip wheel --no-deps`), written under `destination`."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(
            f"ship_code: {root} is not a source checkout (no pyproject.toml); it ships an installed copy only"
        )
    destination.mkdir(parents=True, exist_ok=True)
    # Without build isolation first (no download of the build backend); a setuptools too old to build wheels
    # by itself (no `wheel` package) needs pip's isolated build, which fetches a current one.
    errors = []
    for isolation in (["--no-build-isolation"], []):
        command = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            *isolation,
            "--quiet",
            "-w",
            str(destination),
        ]
        done = subprocess.run([*command, str(root)], capture_output=True, text=True, check=False)
        wheels = sorted(destination.glob("llava_batch-*.whl"))
        if not done.returncode and wheels:
            return wheels[-1]
        errors.append(" ".join(done.stderr.split())[-300:])
    raise ConfigError(f"ship_code: `pip wheel --no-deps` of {root} failed: {errors[-1]}")


def submit(
    config_path: str | os.PathLike,
    address: str | None,
    *,
    ship_code: bool = False,
    runtime_env: RuntimeEnvOptions | None = None,
) -> str:
    """Validate the job file here, submit it, return the job id."""
    job_file = load_job_file(config_path)  # settings errors show up here, not on the cluster
    warn_local_paths(job_file.config)
    options = runtime_env or RuntimeEnvOptions()
    ship_code = ship_code or options.ship_code
    staging = Path(tempfile.mkdtemp(prefix="llava-batch-submit-"))
    try:
        # Everything the caller gave is checked (and the wheel built) before the cluster is asked anything.
        wheel = build_wheel(staging / WHEELS_DIR) if ship_code else None
        env = build_runtime_env(staging, options, wheel)
        shutil.copyfile(job_file.path, staging / CONFIG_NAME)
        client = job_client(address)
        # Ray uploads working_dir during submit_job, so the staging folder can go right after.
        submission_id = f"llava-batch-{job_file.job}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                job_id = client.submit_job(
                    entrypoint=entrypoint_for(),
                    submission_id=submission_id,
                    runtime_env=env,
                    metadata={"job": job_file.job, "config": job_file.path.name},
                )
                break
            except RuntimeError as error:
                if not server_error(error):
                    raise
                # The job agent starts some seconds after the dashboard answers, and says "try again later".
                if "No available agent" not in str(error) or time.monotonic() > deadline:
                    raise unavailable(client.get_address(), error) from None
                logger.info("the cluster's job agent is not up yet; trying again in %.0f s", AGENT_RETRY_S)
                time.sleep(AGENT_RETRY_S)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("submitted %s as %s to %s", job_file.path, job_id, client.get_address())
    return job_id


def warn_local_paths(config: Any) -> None:
    """The job runs on the cluster: an input or output on this machine's disk is not there."""
    from llava_batch.pipeline.run.ray_cluster import local_path_problem

    for name in ("input", "output"):
        problem = local_path_problem(name, getattr(config, name, None))
        if problem:
            logger.warning("%s", problem)


def stop_job(job_id: str, address: str | None) -> bool:
    """Ask Ray to stop a job; False when it had already ended."""
    return bool(_for_job(job_id, address, lambda client: client.stop_job(job_id)))


def follow_logs(job_id: str, address: str | None, write: Any) -> str:
    """Stream a job's logs as they come (Ray's tail endpoint), then return its final status."""
    import asyncio

    client = job_client(address)
    _for_job(
        job_id, address, lambda client: client.get_job_info(job_id), client
    )  # an unknown id: one clear line

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            write(lines)

    asyncio.run(tail())
    return _name(_for_job(job_id, address, lambda client: client.get_job_status(job_id), client))


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
