"""harmonizer_dagster: messy source files in, clean, deduplicated, quality-checked tables out."""

from harmonizer_dagster.definitions import defs

__all__ = ["defs"]
