"""AWS Bedrock: OpenAI Chat Completions ⇄ Converse / ConverseStream (SigV4-signed, AWS event-stream framed), and
embeddings through InvokeModel (Titan, Cohere). Needs the ``bedrock`` extra (botocore) only for signing."""

from aigw.providers.bedrock.adapter import BedrockAdapter, default_endpoint
from aigw.providers.bedrock.stream import BedrockStreamDecoder

__all__ = ["BedrockAdapter", "BedrockStreamDecoder", "default_endpoint"]
