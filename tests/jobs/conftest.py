"""Job tests run their jobs in this process against one shared local Ray (tests/support/shared_ray.py)."""

import pytest


@pytest.fixture(autouse=True)
def _jobs_share_one_ray(request: pytest.FixtureRequest) -> None:
    # Only tests that run jobs (marked integration); tests of what happens before or without Ray ask for `own_ray`.
    if request.node.get_closest_marker("integration") and "own_ray" not in request.fixturenames:
        request.getfixturevalue("shared_ray")
