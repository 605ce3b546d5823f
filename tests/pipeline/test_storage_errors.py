"""Object-store errors: transient ones are retried, permanent ones (credentials, bucket, endpoint) end the run at
once with exit 2 and one line naming the URI and the cause; a store that is down at start fails in seconds."""

import socket
import time

import pytest

from llava_batch.cli.main import main
from llava_batch.pipeline.io.storage import StoreError, retry_io

ACCESS_DENIED = OSError(
    "When getting information for key 'a' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject operation"
)
REFUSED = OSError("AWS Error NETWORK_CONNECTION during HeadObject operation: curlCode: 7, Could not connect")


def test_permanent_errors_are_not_retried():
    calls = []

    def denied():
        calls.append(1)
        raise ACCESS_DENIED

    started = time.monotonic()
    with pytest.raises(StoreError, match=r"^listing s3://b/a/: access denied"):
        retry_io(denied, "listing s3://b/a/")
    assert len(calls) == 1 and time.monotonic() - started < 0.5
    for text, cause in [
        ("AWS Error NO_SUCH_BUCKET during ListObjectsV2", "no such bucket"),
        ("AWS Error SIGNATURE_DOES_NOT_MATCH during ListObjectsV2", "access denied: signature mismatch"),
        ("AWS Error INVALID_ACCESS_KEY_ID during ListObjectsV2", "access denied: invalid access key id"),
        (
            "curlCode: 6, Could not resolve hostname; Details: Could not resolve host: x.invalid",
            "invalid endpoint",
        ),
    ]:
        with pytest.raises(StoreError, match=f"s3://b/a/: {cause}"):
            retry_io(lambda text=text: (_ for _ in ()).throw(OSError(text)), "reading", uri="s3://b/a/")


def test_transient_errors_are_retried_until_they_pass_or_the_budget_is_spent():
    outcomes = [REFUSED, REFUSED, "ok"]

    def flaky():
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retry_io(flaky, "reading s3://b/a") == "ok"
    started = time.monotonic()
    with pytest.raises(OSError, match="NETWORK_CONNECTION") as raised:
        retry_io(lambda: (_ for _ in ()).throw(REFUSED), "reading s3://b/a", budget_s=1.0)
    assert not isinstance(raised.value, StoreError) and time.monotonic() - started < 2


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.integration
def test_a_store_the_job_cannot_use_fails_fast_with_one_line(
    seaweedfs, s3_bucket, tiny_models, monkeypatch, capsys
):
    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    seaweedfs.fs().pipe(f"{s3_bucket}/images/a.png", b"png")
    model = str(tiny_models["llava"])

    def run(input_uri: str, output_uri: str, **env: str) -> tuple[int, float, list[str]]:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            started = time.monotonic()
            code = main(["caption", "--input", input_uri, "--output", output_uri, "--model", model])
        lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
        return code, time.monotonic() - started, lines

    images, captions = f"s3://{s3_bucket}/images/", f"s3://{s3_bucket}/captions/"
    code, took, lines = run(images, captions, AWS_SECRET_ACCESS_KEY="wrong-secret")
    assert (code, len(lines)) == (2, 1) and took < 10, lines
    assert lines[0].startswith(f"llava-batch: error: {images}: access denied")

    code, took, lines = run(images, "s3://no-such-bucket-here/captions/")
    assert (code, len(lines)) == (2, 1) and took < 10, lines
    assert (
        lines[0]
        == "llava-batch: error: s3://no-such-bucket-here/captions/: no such bucket 'no-such-bucket-here'"
    )

    code, took, lines = run("s3://no-such-bucket-here/images/", captions)
    assert code == 2 and lines == [
        "llava-batch: error: s3://no-such-bucket-here/images/: no such bucket 'no-such-bucket-here'"
    ]

    code, took, lines = run(images, captions, AWS_ENDPOINT_URL=f"http://127.0.0.1:{closed_port()}")
    assert (code, len(lines)) == (2, 1) and took < 15, (took, lines)
    assert lines[0].startswith(f"llava-batch: error: {images}: the object store at http://127.0.0.1:")
    assert "does not answer" in lines[0]
