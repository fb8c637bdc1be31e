"""The OpenAI side of every translated answer: the non-streamed ``ChatCompletion`` and the stream's chunks.

Pure (ADR 0002): ids and timestamps come in a :class:`StreamIdentity`. Translators that build OpenAI output from
another API's answer (Ollama, Anthropic, Bedrock) share these rules rather than restating them:

* one id, one ``created`` and one model on every chunk of a stream, as OpenAI sends them;
* ``role: "assistant"`` rides on the first real chunk, never on a role-only chunk (ADR 0003): the gateway commits
  to a target on its first chunk, so an error right after a role-only chunk could no longer fall back;
* when the client asked for usage, every ordinary chunk says ``"usage": null`` and one last chunk with no choices
  carries the counts (OpenAI's behaviour); otherwise no chunk has a ``usage`` field.
"""

from __future__ import annotations

from msgspec import UNSET, UnsetType

from aigw.providers.base import Completion, StreamIdentity
from aigw.schema import chat as oa
from aigw.schema.usage import Usage


def completion(
    ident: StreamIdentity,
    model: str,
    *,
    text: str,
    tool_calls: list[oa.ResponseToolCall],
    finish: str,
    usage: Usage,
) -> Completion:
    """A one-choice ``ChatCompletion``. ``content`` is null for an answer of tool calls only, as OpenAI's is.

    The id is the gateway's, not the upstream's: a stream and a plain answer then look alike, and the
    client-visible id is the one the gateway logs and meters under."""
    message = oa.ResponseMessage(content=None if tool_calls and not text else text)
    if tool_calls:
        message.tool_calls = tool_calls
    out = oa.ChatCompletion(
        id=ident.id,
        created=ident.created,
        model=model,
        choices=[oa.Choice(index=0, message=message, finish_reason=finish)],
        usage=usage.to_openai(),
    )
    return Completion(body=oa.encode(out), usage=usage, response_model=model, finish_reason=finish)


class ChunkWriter:
    """Serializes one stream's OpenAI chunks (per request; not shared).

    ``response_model`` is the model the upstream named (some name it only in a later event); until it is set,
    chunks carry the model the request was sent for. ``finish_reason`` is the last one a chunk carried."""

    __slots__ = ("_ident", "_include_usage", "_model", "_started", "finish_reason", "response_model")

    def __init__(self, ident: StreamIdentity, model: str, include_usage: bool) -> None:
        self._ident = ident
        self._model = model
        self._include_usage = include_usage
        self._started = False  # a chunk went out, so the role has been sent
        self.response_model: str | None = None
        self.finish_reason: str | None = None

    @property
    def started(self) -> bool:
        return self._started

    def _encode(self, choices: list[oa.ChunkChoice], usage: oa.CompletionUsage | UnsetType | None) -> bytes:
        ident, model = self._ident, self.response_model or self._model
        return oa.encode(oa.ChatCompletionChunk(ident.id, ident.created, model, choices, usage))

    def chunk(self, delta: oa.Delta, finish: str | None = None) -> bytes:
        """One choice-0 chunk; the first one also carries the role."""
        if not self._started:
            delta.role = "assistant"
            self._started = True
        if finish is not None:
            self.finish_reason = finish
        return self._encode([oa.ChunkChoice(0, delta, finish)], None if self._include_usage else UNSET)

    def usage_chunk(self, usage: Usage) -> bytes:
        """The closing chunk of a stream whose client asked for usage: no choices, the counts."""
        return self._encode([], usage.to_openai())

    def usage_tail(self, usage: Usage) -> tuple[bytes, ...]:
        """:meth:`usage_chunk` if the client asked for usage (``stream_options.include_usage``), else nothing."""
        return (self.usage_chunk(usage),) if self._include_usage else ()


class WriterStream:
    """A stream decoder's ``response_model`` and ``finish_reason``, read from the :class:`ChunkWriter` it writes
    its chunks with (``_out``). Nothing to override: the decoder keeps its own state and its ``usage``."""

    __slots__ = ()
    _out: ChunkWriter

    @property
    def response_model(self) -> str | None:
        return self._out.response_model

    @property
    def finish_reason(self) -> str | None:
        return self._out.finish_reason
