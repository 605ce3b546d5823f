"""Runs the multi-node tests (tests/cluster/test_multinode.py, test_autoscaling.py) in a private network namespace holding only loopback.

Ray nodes of one machine cannot be kept on 127.0.0.1 any other way (tests/support/loopback_cluster.py), and these
tests must never send traffic over the machine's network interface. Making the namespace needs root (CI runs as
root); where it cannot be made this test fails saying why, and never falls back to the machine's own address.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.loopback_cluster import NAMESPACE_ENV

pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
NAMESPACE_TESTS = [Path(__file__).with_name(name) for name in ("test_multinode.py", "test_autoscaling.py")]
# The cluster starts once (about 40 s on 2 cores); each of its jobs takes one to three minutes there.
TIMEOUT_S = 1800


def namespace_test_names() -> list[str]:
    trees = [ast.parse(path.read_text()) for path in NAMESPACE_TESTS]
    return [
        node.name
        for tree in trees
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    ]


@pytest.mark.timeout(TIMEOUT_S + 60)
def test_the_multinode_tests_pass_inside_a_loopback_only_network_namespace(tmp_path):
    probe = subprocess.run(["unshare", "--net", "--", "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.fail(
            "cannot make a private network namespace for the multi-node tests "
            f"(`unshare --net`: {probe.stderr.strip() or probe.returncode}); they need root or CAP_SYS_ADMIN, "
            "as in CI. They never run on the machine's own network address instead."
        )
    log = tmp_path / "multinode.log"
    pytest_command = [
        sys.executable, "-m", "pytest", *(str(path.relative_to(REPOSITORY)) for path in NAMESPACE_TESTS),
        "-m", "netns", "-q", "-p", "no:cacheprovider", "--durations=10", "-s",
    ]  # fmt: skip
    env = {**os.environ, NAMESPACE_ENV: "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "wb") as out:
        result = subprocess.run(
            ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *pytest_command],
            cwd=REPOSITORY,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT_S,
            check=False,
        )
    output = log.read_text(errors="replace")
    summary = "\n".join(line for line in output.splitlines() if not line.startswith("Writing model shards"))
    print(summary[-6000:])  # the inner durations and placement, in the CI log with -s or on failure
    assert result.returncode == 0, summary[-12000:]
    expected = len(namespace_test_names())
    assert re.search(rf"\b{expected} passed\b", output), summary[-3000:]
