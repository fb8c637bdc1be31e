"""The gateway's one error tree. Mapped to HTTP in exactly one place: ``aigw.api.errors``.

::

    GatewayError                      status  type                    code
    ├── InvalidRequest                400     invalid_request_error   (param-specific)
    │   └── BodyTooLarge              413     invalid_request_error   request_too_large
    ├── Unauthorized                  401     authentication_error    invalid_api_key
    ├── NotFound                      404     invalid_request_error   not_found
    │   └── ModelNotFound             404     invalid_request_error   model_not_found
    ├── Conflict                      409     invalid_request_error   conflict
    ├── RateLimited                   429     rate_limit_error        rate_limit_exceeded
    ├── BudgetExceeded                402     insufficient_quota      budget_exceeded
    ├── ServiceUnavailable            503     service_unavailable     (e.g. database down on an admin write)
    ├── ClientDisconnected            499     client_closed           (nobody is left to read it; for the ledger)
    └── UpstreamError                 (the upstream's status for request errors, else 502)
        ├── UpstreamTimeout           504     timeout
        ├── UpstreamUnreachable       502     upstream_unreachable    (refused / reset / DNS)
        ├── CircuitOpen               502     circuit_open            (skipped without a call; never "timed out")
        └── AllTargetsFailed          502/504 upstream_error          (carries every attempt's error)

``UpstreamError.falls_back`` is the single fallback rule (contract, "Semantics"): 429, 5xx, timeouts, refused or
reset connections and upstream 401/403/404 fall through to the next target; other 4xx go back to the client.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.instance_code = code
        self.headers: dict[str, str] = dict(headers or {})
        self.metered = False  # already in the ledger and the request metrics (set by the gateway)

    @property
    def http_status(self) -> int:
        return self.status

    @property
    def error_type(self) -> str:
        return self.type

    @property
    def error_code(self) -> str | None:
        return self.instance_code if self.instance_code is not None else self.code


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class BodyTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class Unauthorized(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class Conflict(GatewayError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class RateLimited(GatewayError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(GatewayError):
    status = 402
    type = "insufficient_quota"
    code = "budget_exceeded"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "service_unavailable"
    code = "service_unavailable"


class ClientDisconnected(GatewayError):
    status = 499  # nginx's "client closed request"
    type = "client_closed"
    code = "client_closed"


class UpstreamError(GatewayError):
    """An upstream answered with an error status (or an error event inside a stream)."""

    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None,
        provider: str = "",
        retry_after: float | None = None,
        upstream_type: str | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.upstream_status = upstream_status
        self.provider = provider
        self.retry_after = retry_after
        self.upstream_type = upstream_type

    @property
    def falls_back(self) -> bool:
        s = self.upstream_status
        if s is None:
            return True
        return s == 429 or s >= 500 or s in (401, 403, 404)

    @property
    def http_status(self) -> int:
        # A request error the upstream rejected is the client's to fix: pass its status through.
        s = self.upstream_status
        if s is not None and 400 <= s < 500 and not self.falls_back:
            return s
        return 502

    @property
    def error_type(self) -> str:
        if not self.falls_back and self.upstream_type:
            return self.upstream_type
        if not self.falls_back:
            return "invalid_request_error"
        return self.type


class UpstreamTimeout(UpstreamError):
    type = "timeout"
    code = "upstream_timeout"

    def __init__(self, message: str, *, provider: str = "") -> None:
        super().__init__(message, upstream_status=None, provider=provider)

    @property
    def http_status(self) -> int:
        return 504


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"

    def __init__(self, message: str, *, provider: str = "") -> None:
        super().__init__(message, upstream_status=None, provider=provider)


class CircuitOpen(UpstreamError):
    code = "circuit_open"

    def __init__(self, message: str) -> None:
        super().__init__(message, upstream_status=None)


class AllTargetsFailed(UpstreamError):
    """Every target of the request's chain failed; the message names each target and why."""

    def __init__(self, failures: Sequence[tuple[str, UpstreamError]]) -> None:
        parts = [f"{target}: {err.message}" for target, err in failures]
        # When every target asked the client to wait (429/529 with retry-after), pass the shortest wait on.
        waits = [e.retry_after for _, e in failures if e.retry_after is not None]
        retry_after = min(waits) if failures and len(waits) == len(failures) else None
        super().__init__(
            "all upstream targets failed: " + "; ".join(parts),
            upstream_status=None,
            code="all_targets_failed",
            retry_after=retry_after,
        )
        self.failures = list(failures)

    @property
    def http_status(self) -> int:
        # 504 when every target that was actually called timed out; a target skipped for its open circuit was
        # not tried, so it neither makes this a 502 nor, alone, a 504.
        tried = [e for _, e in self.failures if not isinstance(e, CircuitOpen)]
        if tried and all(isinstance(e, UpstreamTimeout) for e in tried):
            return 504
        return 502

    @property
    def error_type(self) -> str:
        return UpstreamTimeout.type if self.http_status == 504 else self.type
