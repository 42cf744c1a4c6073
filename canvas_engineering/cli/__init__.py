"""Command line: the ``canvas-engineering`` entry point and its LightningCLI."""

from __future__ import annotations

from canvas_engineering.cli.commands import (
    main,
)

__all__ = [
    "main",
]
