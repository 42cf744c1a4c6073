"""LightningCLI over :class:`CanvasModule` and the registered datamodules.

``canvas-engineering fit`` with no ``--config`` trains the packaged quick start
(``configs/quickstart.yaml``); any ``--trainer.*``, ``--model.*`` or ``--data.*`` flag still
applies. The datamodule's ``schema`` and ``region_formats`` are linked into the model, so a
config only says which data to use.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from canvas_engineering.module import CanvasModule

__all__ = ["QUICKSTART_CONFIG", "CanvasCLI", "run_lightning_cli"]

#: The packaged quick-start configuration.
QUICKSTART_CONFIG = str(resources.files("canvas_engineering") / "configs" / "quickstart.yaml")


class CanvasCLI(LightningCLI):
    """LightningCLI that links the datamodule's canvas into the model."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:  # noqa: D102
        parser.link_arguments("data.schema", "model.schema", compute_fn=_schema_dict, apply_on="instantiate")
        parser.link_arguments("data.region_formats", "model.region_formats", apply_on="instantiate")


def _schema_dict(schema: Any) -> dict[str, Any]:  # noqa: ANN401
    return schema.to_dict()


def run_lightning_cli(args: ArgsType = None, run: bool = True) -> CanvasCLI:
    """Run the CLI (``args`` as a list, like ``sys.argv[1:]``)."""
    from canvas_engineering.datamodules import CanvasDataModule
    from canvas_engineering.plugin_host import get_registry

    get_registry()  # load plugins first so datamodule classes resolve by name
    args = list(args) if args is not None else None
    defaults = {"fit": {"default_config_files": [QUICKSTART_CONFIG]}}
    return CanvasCLI(
        CanvasModule,
        CanvasDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        parser_kwargs=defaults,
        args=args,
        run=run,
    )
