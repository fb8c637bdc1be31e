"""The public OpenAI-compatible wire types, which are also the gateway's canonical types (ADR 0001)."""
