"""Shared pytest fixtures. Each block below belongs to one concern; keep new fixtures in their own section."""

from __future__ import annotations

import contextlib
import os
import re
import uuid
from collections.abc import Iterator

import pytest

from tests.support.loopback_cluster import NAMESPACE_ENV
from tests.support.seaweedfs import S3Endpoint, run_seaweedfs
from tests.support.shared_ray import SharedRay

# Tiny random-weight models of every family, built once per session (tests/support/models.py).
pytest_plugins = ["tests.support.models"]

# ---------------------------------------------------------------------------------------------------------------
# Multi-node tests run only inside a loopback-only network namespace (tests/cluster/test_in_namespace.py)
# ---------------------------------------------------------------------------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(NAMESPACE_ENV) == "1":
        return
    outside = [item for item in items if not item.get_closest_marker("netns")]
    if len(outside) < len(items):
        config.hook.pytest_deselected(items=[item for item in items if item.get_closest_marker("netns")])
        items[:] = outside


# ---------------------------------------------------------------------------------------------------------------
# Object storage: a real SeaweedFS S3 server on 127.0.0.1 (tests/support/seaweedfs.py)
# ---------------------------------------------------------------------------------------------------------------

# Recognisable in logs and never a real AWS key.
SEAWEEDFS_ACCESS_KEY = "llava-batch-test"
SEAWEEDFS_SECRET_KEY = "llava-batch-test-secret"


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Endpoint]:
    """One SeaweedFS server for the session; `.fs()`, `.env()`, and `.stop()`/`.start()` for fault tests."""
    data_dir = tmp_path_factory.mktemp("seaweedfs")
    with run_seaweedfs(
        data_dir, access_key=SEAWEEDFS_ACCESS_KEY, secret_key=SEAWEEDFS_SECRET_KEY
    ) as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(seaweedfs: S3Endpoint, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh empty bucket named after the test; deleted afterwards (each bucket holds a SeaweedFS volume)."""
    # A fault test that stopped the server and failed before restarting it must not break the tests after it.
    seaweedfs.start()
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"t-{slug}-{uuid.uuid4().hex[:8]}" if slug else f"t-{uuid.uuid4().hex[:12]}"
    fs = seaweedfs.fs()
    fs.mkdir(name)
    yield name
    seaweedfs.start()
    with contextlib.suppress(FileNotFoundError):  # the test may have removed it itself
        seaweedfs.fs().rm(name, recursive=True)


# ---------------------------------------------------------------------------------------------------------------
# Ray: one local Ray shared by the in-process job tests (tests/support/shared_ray.py)
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_ray_session() -> Iterator[SharedRay]:
    shared = SharedRay()
    yield shared
    shared.stop()


@pytest.fixture
def shared_ray(shared_ray_session: SharedRay, seaweedfs: S3Endpoint) -> SharedRay:
    """Jobs run in this test join the shared Ray instead of starting their own; its workers reach SeaweedFS."""
    shared_ray_session.ensure(seaweedfs.env())
    return shared_ray_session


@pytest.fixture(autouse=True)
def _integration_tests_share_one_ray(request: pytest.FixtureRequest) -> None:
    # Tests that run jobs are marked integration; tests of what happens before or without Ray ask for `own_ray`.
    if request.node.get_closest_marker("integration") and "own_ray" not in request.fixturenames:
        request.getfixturevalue("shared_ray")


@pytest.fixture
def own_ray(shared_ray_session: SharedRay) -> None:
    """For tests of starting and stopping Ray itself: no shared Ray is running while they run."""
    shared_ray_session.stop()
