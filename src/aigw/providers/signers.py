"""Wire signing: the second provider seam. Static header auth now; SigV4 arrives with Bedrock."""

from __future__ import annotations

from collections.abc import Mapping


class StaticHeaders:
    """Bearer tokens, ``x-api-key`` and friends: headers that do not depend on the body."""

    __slots__ = ("_headers",)

    def __init__(self, headers: Mapping[str, str]) -> None:
        self._headers = dict(headers)

    def sign(self, method: str, url: str, headers: dict[str, str], body: bytes) -> dict[str, str]:
        headers.update(self._headers)
        return headers

    def __repr__(self) -> str:  # never show credentials in a repr/log
        return f"StaticHeaders({sorted(self._headers)})"
