"""Model resolution (contract): a configured alias → its targets in order; else ``PROVIDER/MODEL`` split at the
first ``/`` → that one target; else 404 ``model_not_found``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from aigw.errors import ModelNotFound


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str
    retries: int = 0  # extra attempts on this target before falling back (per alias target)

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model}"


class Router:
    def __init__(self, aliases: Mapping[str, Sequence[Target]], providers: Iterable[str]) -> None:
        self._providers = frozenset(providers)
        # Targets on providers that are not enabled (no key configured) are dropped here, once.
        self._aliases = {
            name: tuple(t for t in targets if t.provider in self._providers) for name, targets in aliases.items()
        }

    @property
    def aliases(self) -> Mapping[str, tuple[Target, ...]]:
        return self._aliases

    def resolve(self, model: str) -> tuple[Target, ...]:
        targets = self._aliases.get(model)
        if targets is not None:
            if not targets:
                raise ModelNotFound(
                    f"The model `{model}` has no enabled target (its providers have no credentials configured)",
                    param="model",
                )
            return targets
        provider, sep, upstream_model = model.partition("/")
        if sep and upstream_model and provider in self._providers:
            return (Target(provider, upstream_model),)
        raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")
