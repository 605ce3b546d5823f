"""Fixtures of the multi-node tests, which run only inside a loopback-only network namespace
(tests/cluster/test_in_namespace.py)."""

from __future__ import annotations

import pytest

from tests.support.cluster_jobs import IMAGES
from tests.support.images import SIZES, image_bytes
from tests.support.loopback_cluster import in_loopback_only_namespace


@pytest.fixture(scope="module", autouse=True)
def _inside_the_namespace(request: pytest.FixtureRequest) -> None:
    if not request.node.get_closest_marker("netns"):
        return
    why = in_loopback_only_namespace()
    if why:
        pytest.fail(f"the multi-node tests must run in a loopback-only network namespace: {why}")


@pytest.fixture
def inputs(seaweedfs, s3_bucket: str) -> list[str]:
    fs = seaweedfs.fs()
    names = [f"images/{index:03d}.png" for index in range(IMAGES)]
    for index, name in enumerate(names):
        with fs.open(f"{s3_bucket}/{name}", "wb") as handle:
            handle.write(image_bytes(index, SIZES[index % len(SIZES)]))
    return [name.removeprefix("images/") for name in names]
