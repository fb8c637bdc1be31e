"""Configuration: frozen pydantic models loaded from YAML with ${VAR} expansion."""

from aigw.config.loader import ConfigError, load_settings, parse_settings
from aigw.config.model import Settings

__all__ = ["ConfigError", "Settings", "load_settings", "parse_settings"]
