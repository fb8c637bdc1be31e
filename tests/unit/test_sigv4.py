"""SigV4Signer signs as AWS specifies. Three independent checks:

1. the SigV4 implementation written from the AWS docs (``tests.fakes.bedrock_fake``: the one the fake verifies
   with) reproduces AWS's published test-suite signatures, so it is a trustworthy reference;
2. the signer's Authorization header equals that reference for Bedrock requests (colons in the model id, session
   tokens, bodies), at a fixed date;
3. it equals what boto3's own ``bedrock-runtime`` client sends for the same request, captured at ``before-send``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.credentials import RefreshableCredentials

from aigw.providers.sigv4 import MissingCredentials, SigV4Signer, host_header
from tests.fakes.bedrock_fake import canonical_request, parse_authorization, signature

NOW = datetime(2026, 11, 26, 12, 30, 45)  # botocore works in naive UTC
AMZ_DATE = "20261126T123045Z"
KEY, SECRET, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "IQoJb3JpZ2luX2VjEXAMPLETOKEN//="
URL = "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
BODY = b'{"messages":[{"role":"user","content":[{"text":"hello"}]}]}'
EMPTY = hashlib.sha256(b"").hexdigest()


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """No real AWS configuration leaks in: empty config files, no metadata service, fixed test keys."""
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    yield tmp_path


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda *a, **k: NOW)


def reference_authorization(method: str, url: str, headers: dict[str, str], body: bytes, signed: list[str]) -> str:
    """The Authorization header the AWS docs' algorithm gives (tests.fakes.bedrock_fake), for ``signed`` headers."""
    path_query = url.split("://", 1)[1].partition("/")[2]
    path, _, query = ("/" + path_query).partition("?")
    creq = canonical_request(method, path, query, headers.items(), signed, hashlib.sha256(body).hexdigest())
    sig = signature(SECRET, headers["X-Amz-Date"], "us-east-1", "bedrock", creq)
    return f"AWS4-HMAC-SHA256 Credential={KEY}/{AMZ_DATE[:8]}/us-east-1/bedrock/aws4_request, SignedHeaders={';'.join(signed)}, Signature={sig}"  # noqa: E501


# ---- 1. the reference reproduces AWS's test suite ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "query", "expected"),
    [
        ("GET", "/", "", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"),  # get-vanilla
        ("POST", "/", "", "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),  # post-vanilla
        (  # get-vanilla-query-order-key-case
            "GET",
            "/",
            "Param2=value2&Param1=value1",
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
        ),
    ],
)
def test_reference_reproduces_the_aws_test_suite(method: str, path: str, query: str, expected: str) -> None:
    headers = [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")]
    creq = canonical_request(method, path, query, headers, ["host", "x-amz-date"], EMPTY)
    assert signature(SECRET, "20150830T123600Z", "us-east-1", "service", creq) == expected


def test_reference_double_encodes_the_path() -> None:
    # Every service but S3: the path is URI-encoded once more for the canonical request (%3A -> %253A).
    creq = canonical_request("POST", "/model/a.b-v1%3A0/converse", "", [], [], EMPTY)
    assert creq.splitlines()[1] == "/model/a.b-v1%253A0/converse"


# ---- 2. the signer matches the reference ------------------------------------------------------------------------


@pytest.mark.usefixtures("frozen_clock")
def test_signature_matches_the_reference() -> None:
    headers = SigV4Signer("us-east-1").sign(
        "POST", URL, {"content-type": "application/json", "user-agent": "aigw"}, BODY
    )
    assert headers["X-Amz-Date"] == AMZ_DATE
    assert headers["host"] == "bedrock-runtime.us-east-1.amazonaws.com"
    assert "X-Amz-Security-Token" not in headers
    auth = headers["Authorization"]
    # user-agent is not signed (botocore's unsigned list); content-type, host and the date are.
    assert auth == reference_authorization("POST", URL, headers, BODY, ["content-type", "host", "x-amz-date"])
    assert headers["content-type"] == "application/json" and headers["user-agent"] == "aigw"


@pytest.mark.usefixtures("frozen_clock")
def test_session_token_is_sent_and_signed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    headers = SigV4Signer("us-east-1").sign("POST", URL, {"content-type": "application/json"}, BODY)
    assert headers["X-Amz-Security-Token"] == TOKEN
    signed = ["content-type", "host", "x-amz-date", "x-amz-security-token"]
    assert parse_authorization(headers["Authorization"])["SignedHeaders"] == ";".join(signed)  # type: ignore[index]
    assert headers["Authorization"] == reference_authorization("POST", URL, headers, BODY, signed)


@pytest.mark.usefixtures("frozen_clock")
def test_body_and_path_are_covered() -> None:
    signer = SigV4Signer("us-east-1")
    base = signer.sign("POST", URL, {}, BODY)["Authorization"]
    assert signer.sign("POST", URL, {}, BODY + b" ")["Authorization"] != base
    assert signer.sign("POST", URL.replace("converse", "converse-stream"), {}, BODY)["Authorization"] != base
    assert signer.sign("POST", URL, {}, BODY)["Authorization"] == base  # deterministic at a fixed time


@pytest.mark.usefixtures("frozen_clock")
def test_stale_signing_headers_are_replaced() -> None:
    stale = {"Authorization": "AWS4-HMAC-SHA256 old", "X-Amz-Date": "20200101T000000Z", "Host": "evil.example"}
    headers = SigV4Signer("us-east-1").sign("POST", URL, stale, BODY)
    assert headers["X-Amz-Date"] == AMZ_DATE
    assert headers["host"] == "bedrock-runtime.us-east-1.amazonaws.com"
    assert "Host" not in headers and headers["Authorization"] != stale["Authorization"]


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://bedrock-runtime.us-east-1.amazonaws.com/model/x/converse", "bedrock-runtime.us-east-1.amazonaws.com"),
        ("https://Bedrock.Example:443/x", "bedrock.example"),
        ("http://127.0.0.1:8123/model/x/converse", "127.0.0.1:8123"),
        ("http://localhost:80/x", "localhost"),
        ("http://[::1]:9000/x", "[::1]:9000"),
    ],
)
def test_host_header(url: str, host: str) -> None:
    assert host_header(url) == host


# ---- 3. the signer matches boto3 --------------------------------------------------------------------------------


class Captured(Exception):
    pass


@pytest.mark.usefixtures("frozen_clock")
@pytest.mark.parametrize("token", [None, TOKEN])
def test_signature_matches_boto3(monkeypatch: pytest.MonkeyPatch, token: str | None) -> None:
    if token:
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    # A fresh session: boto3's default one caches the credentials it found first.
    session = boto3.session.Session()
    client = session.client(
        "bedrock-runtime", region_name="us-east-1", config=Config(retries={"total_max_attempts": 1})
    )
    sent: dict[str, Any] = {}

    def capture(request: Any, **_: Any) -> None:
        sent.update(method=request.method, url=request.url, body=request.body, headers=dict(request.headers))
        raise Captured

    client.meta.events.register("before-send.bedrock-runtime.Converse", capture)
    with pytest.raises(Captured):
        client.converse(
            modelId="anthropic.claude-3-5-sonnet-20240620-v1:0",
            messages=[{"role": "user", "content": [{"text": "hi"}]}],
        )
    client.close()
    theirs = {k: v.decode() if isinstance(v, bytes) else v for k, v in sent["headers"].items()}
    assert sent["url"] == URL  # boto3 percent-encodes the model id the same way the adapter does
    # Give the signer the headers boto3 signed (minus the ones a signer adds itself), the same URL and body.
    signed = parse_authorization(theirs["Authorization"])["SignedHeaders"].split(";")  # type: ignore[index]
    own = {"host", "x-amz-date", "x-amz-security-token"}
    inputs = {k: v for k, v in theirs.items() if k.lower() in set(signed) - own}
    ours = SigV4Signer("us-east-1").sign(sent["method"], sent["url"], inputs, sent["body"])
    assert ours["Authorization"] == theirs["Authorization"]
    assert ours["X-Amz-Date"] == theirs["X-Amz-Date"]
    assert ours.get("X-Amz-Security-Token") == theirs.get("X-Amz-Security-Token") == token


# ---- credentials ------------------------------------------------------------------------------------------------


def test_profile_from_shared_credentials_file(monkeypatch: pytest.MonkeyPatch, aws_env: Path) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (aws_env / "credentials").write_text(
        "[gateway]\naws_access_key_id = AKIDPROFILE\naws_secret_access_key = profile-secret\naws_session_token = tok\n"
    )
    signer = SigV4Signer("eu-west-1", profile="gateway")
    headers = signer.sign("POST", URL.replace("us-east-1", "eu-west-1"), {}, BODY)
    assert (
        "Credential=AKIDPROFILE/" in headers["Authorization"]
        and "/eu-west-1/bedrock/aws4_request" in headers["Authorization"]
    )
    assert headers["X-Amz-Security-Token"] == "tok"
    assert signer.credential_source == "shared-credentials-file"


def test_missing_profile_is_a_clear_error() -> None:
    with pytest.raises(MissingCredentials, match="profile 'nope'"):
        SigV4Signer("us-east-1", profile="nope")


def test_no_credentials_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(MissingCredentials, match="no AWS credentials found"):
        SigV4Signer("us-east-1")


def test_region_is_required() -> None:
    with pytest.raises(MissingCredentials, match="region"):
        SigV4Signer("")


def test_repr_shows_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    signer = SigV4Signer("us-east-1")
    shown = repr(signer) + str(signer)
    assert shown == "SigV4Signer(region='us-east-1', service='bedrock', source='env')" * 2
    assert KEY not in shown and SECRET not in shown and TOKEN not in shown


@pytest.mark.usefixtures("frozen_clock")
def test_refreshable_credentials_are_read_at_each_sign(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials with an expiry (SSO, assume-role, instance metadata) rotate under the signer without a restart."""
    generation = iter(range(1, 100))

    def refresh() -> dict[str, str]:
        n = next(generation)
        # Already inside botocore's mandatory refresh window, so every read refreshes.
        expiry = datetime.fromtimestamp(time.time() + 60).astimezone().isoformat()
        return {"access_key": f"AKIDGEN{n}", "secret_key": f"secret{n}", "token": f"token{n}", "expiry_time": expiry}

    creds = RefreshableCredentials.create_from_metadata(refresh(), refresh, "assume-role")
    monkeypatch.setattr("botocore.session.Session.get_credentials", lambda self: creds)
    signer = SigV4Signer("us-east-1")
    first = signer.sign("POST", URL, {}, BODY)
    second = signer.sign("POST", URL, {}, BODY)
    assert "Credential=AKIDGEN2/" in first["Authorization"] and first["X-Amz-Security-Token"] == "token2"
    assert "Credential=AKIDGEN3/" in second["Authorization"] and second["X-Amz-Security-Token"] == "token3"
    assert signer.credential_source == "assume-role"


def test_signing_is_cheap() -> None:
    signer = SigV4Signer("us-east-1")
    body = BODY * 20  # ~1.2 KB, a typical chat request
    signer.sign("POST", URL, {"content-type": "application/json"}, body)
    n = 300
    start = time.perf_counter()
    for _ in range(n):
        signer.sign("POST", URL, {"content-type": "application/json"}, body)
    per_sign = (time.perf_counter() - start) / n
    assert per_sign < 500e-6  # measured ~35-55 µs; the bound only catches an order-of-magnitude regression
