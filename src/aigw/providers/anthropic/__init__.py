"""Anthropic Messages API provider: ``AnthropicAdapter`` translates OpenAI chat requests to ``/v1/messages``."""

from aigw.providers.anthropic.adapter import AnthropicAdapter

__all__ = ["AnthropicAdapter"]
