"""GET /v1/models types."""

from __future__ import annotations

from msgspec import Struct


class Model(Struct):
    id: str
    created: int
    owned_by: str
    object: str = "model"


class ModelList(Struct):
    data: list[Model]
    object: str = "list"
