"""harmonizer_dagster: messy source files in, clean, deduplicated, quality-checked tables out.

`defs` is loaded on first access, so the pure core (harmonizer_dagster.core) imports without
Dagster: scripts and benchmarks that only need the data logic stay quick to start.
"""

from typing import Any

__all__ = ["defs"]


def __getattr__(name: str) -> Any:
    if name == "defs":
        from harmonizer_dagster.definitions import defs

        return defs
    raise AttributeError(f"module 'harmonizer_dagster' has no attribute {name!r}")


def __dir__() -> list[str]:
    return [*globals(), "defs"]
