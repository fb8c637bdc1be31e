"""The gateway's normalized usage: what pricing, TPM settling and metering read, whatever the provider."""

from __future__ import annotations

from msgspec import Struct

from aigw.schema.chat import CompletionUsage, PromptTokensDetails


class Usage(Struct, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Prompt tokens read from / written to a provider-side prompt cache; priced differently (issue 5).
    cached_prompt_tokens: int = 0
    cache_write_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> CompletionUsage:
        return CompletionUsage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            total_tokens=self.total_tokens,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=self.cached_prompt_tokens),
        )


FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
