"""Errors the store raises for conditions a caller is expected to handle (everything else is a database error)."""


class StoreError(Exception):
    """Base class of the store's domain errors."""


class DuplicateKeyError(StoreError):
    """An API key with the same hash already exists."""


class TenantNotFoundError(StoreError):
    """The tenant does not exist or has been deleted."""
