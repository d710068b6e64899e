"""The package version: the single source of truth (read by hatchling too)."""

__version__ = "0.2.0"
