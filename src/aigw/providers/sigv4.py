"""AWS Signature Version 4 for the ``Signer`` seam, using botocore (the optional ``bedrock`` extra).

botocore is imported inside the constructor only: a gateway without Bedrock providers never loads it.

Credentials come from botocore's standard chain, resolved once when the signer is built (at startup): environment
variables (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``), the shared credentials and
config files (``profile`` or ``AWS_PROFILE``), SSO, web identity, ECS/EKS container credentials and EC2 instance
metadata. Static credentials are frozen once; refreshable ones (SSO, assume-role, container, instance metadata)
are re-read on every ``sign`` through ``get_frozen_credentials()``, which is a lock and a clock check until the
credentials enter botocore's refresh window (15 min before expiry advisory, 10 min mandatory). Then that one call
refreshes them synchronously -- a blocking network call on the event loop, about once an hour, which is the
accepted cost of not running a background refresher; if an advisory refresh fails botocore keeps the old ones.

What is signed is exactly what the transport sends: the method, the URL's path and query as given (botocore
URI-encodes the path once more for the canonical request, as SigV4 requires for every service but S3 -- so the
wire path must reach the server byte for byte, ``%3A`` and all), every header passed in except botocore's
unsigned list (``user-agent``, ``expect``, hop-by-hop headers...), an explicit ``host`` header (returned too, so
the HTTP client cannot send a different one), and the SHA-256 of the body bytes.

botocore logs the canonical request at DEBUG on the ``botocore.auth`` logger, which includes the session token
header: keep that logger above DEBUG in production. Nothing in this module logs or shows a credential.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}


class MissingCredentials(RuntimeError):
    """No AWS credentials could be resolved (or botocore is not installed)."""


def host_header(url: str) -> str:
    """The ``Host`` value for ``url``, as botocore derives it: lower-case, without a default port or userinfo."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


class SigV4Signer:
    """Signs one request with SigV4 (``Authorization``, ``X-Amz-Date``, ``X-Amz-Security-Token`` when the
    credentials carry a session token, and ``host``). Signing a Converse request costs ~35 µs."""

    __slots__ = ("_auth_cls", "_credentials", "_request_cls", "profile", "region", "service")

    def __init__(self, region: str, *, profile: str | None = None, service: str = "bedrock") -> None:
        try:
            import botocore.session
            from botocore.auth import SigV4Auth
            from botocore.awsrequest import AWSRequest
            from botocore.exceptions import BotoCoreError
        except ImportError:  # pragma: no cover - depends on the installed extras
            raise MissingCredentials(
                "AWS signing needs botocore: install the gateway with its `bedrock` extra (pip install 'aigw[bedrock]')"
            ) from None
        if not region:
            raise MissingCredentials("an AWS region is required to sign requests")
        self.region = region
        self.profile = profile
        self.service = service
        self._auth_cls: Any = SigV4Auth
        self._request_cls: Any = AWSRequest
        where = f"profile {profile!r}" if profile else "the default AWS credential chain"
        try:
            credentials = botocore.session.Session(profile=profile).get_credentials()
        except BotoCoreError as exc:
            # e.g. ProfileNotFound, a malformed config file, an SSO token that has expired. The message names files
            # and profiles, never secrets.
            raise MissingCredentials(f"cannot load AWS credentials from {where}: {exc}") from None
        if credentials is None:
            raise MissingCredentials(
                f"no AWS credentials found in {where} (environment variables AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
                "[/AWS_SESSION_TOKEN], shared credentials/config files, SSO, container or instance metadata)"
            )
        self._credentials: Any = credentials

    @property
    def credential_source(self) -> str:
        """Where botocore found the credentials (``env``, ``shared-credentials-file``, ``assume-role``...)."""
        return str(getattr(self._credentials, "method", None) or "unknown")

    def sign(self, method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        creds = self._credentials.get_frozen_credentials()
        if not creds.access_key or not creds.secret_key:
            raise MissingCredentials("the AWS credentials in use have no access key or secret key")
        # Drop any host/auth headers a caller passed: the host is derived from the URL (the same value is
        # returned, so the client sends what was signed) and a stale signature must not survive a retry.
        fresh = {k: v for k, v in headers.items() if k.lower() not in _REPLACED}
        fresh["host"] = host_header(url)
        request = self._request_cls(method=method, url=url, data=body, headers=fresh)
        # A new SigV4Auth per call: it is a plain holder of (credentials, service, region), and a fresh one means
        # the frozen credentials of this call are the ones used throughout it.
        self._auth_cls(creds, self.service, self.region).add_auth(request)
        return dict(request.headers.items())

    def __repr__(self) -> str:  # never a key, secret or token
        profile = f", profile={self.profile!r}" if self.profile else ""
        source = self.credential_source
        return f"SigV4Signer(region={self.region!r}, service={self.service!r}{profile}, source={source!r})"


_REPLACED = frozenset({"host", "authorization", "x-amz-date", "x-amz-security-token", "date"})
