"""LightningCLI over :class:`CanvasModule` and the registered datamodules.

``canvas-engineering fit`` with no ``--config`` trains the packaged quick start
(``configs/quickstart.yaml``); any ``--trainer.*``, ``--model.*`` or ``--data.*`` flag still
applies. The datamodule's ``schema`` and ``region_formats`` are linked into the model, so a
config only says which data to use.
"""

from __future__ import annotations

from importlib import resources
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only

from canvas_engineering.plugin_host.host import get_registry
from canvas_engineering.training.future_metrics import future_metrics_table
from canvas_engineering.training.module import CanvasModule

if TYPE_CHECKING:
    from canvas_engineering.plugin_host.registry import PluginRegistry

__all__ = ["QUICKSTART_CONFIG", "CanvasCLI", "fit_summary", "resolve_datamodule_names", "run_lightning_cli"]

#: The packaged quick-start configuration.
QUICKSTART_CONFIG = str(resources.files("canvas_engineering") / "configs" / "quickstart.yaml")


class CanvasCLI(LightningCLI):
    """LightningCLI that links the datamodule's canvas into the model.

    Args:
        *args: passed to :class:`~lightning.pytorch.cli.LightningCLI`.
        registry: the plugin registry whose datamodules the CLI offers; built before the
            parser so every registered datamodule class is imported and resolves by name.
            ``None``: the default plugin host's.
        **kwargs: passed to :class:`~lightning.pytorch.cli.LightningCLI`.

    """

    def __init__(self, *args: Any, registry: PluginRegistry | None = None, **kwargs: Any) -> None:
        self.registry = registry if registry is not None else get_registry()
        super().__init__(*args, **kwargs)

    def before_instantiate_classes(self) -> None:
        """Hand the CLI's registry to the model when the model takes one (its backbone comes from it)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        model = config.get("model")
        if model is not None and "registry" in model:  # set after parsing: a registry is not a config value
            model.registry = self.registry

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the datamodule's schema, region formats and normalisation statistics into the model."""
        parser.link_arguments("data.schema", "model.schema", compute_fn=_schema_dict, apply_on="instantiate")
        parser.link_arguments("data.region_formats", "model.region_formats", apply_on="instantiate")
        parser.link_arguments("data.normalization", "model.normalization", apply_on="instantiate")

    @rank_zero_only
    def after_fit(self) -> None:
        """Print the sampled-future metrics against the baselines and where the outputs went."""
        print(fit_summary(self.trainer), flush=True)


def fit_summary(trainer: pl.Trainer) -> str:
    """Report the end of a fit: the last validation's sampled future vs baselines, and every output folder."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    lines = [f"Finished at step {trainer.global_step}."]
    if "val/loss" in metrics:
        lines.append(f"val/loss (teacher-forced, weighted data-space MSE): {metrics['val/loss']:.4f}")
    table = future_metrics_table(metrics)
    if table:
        lines += ["Sampled future (CanvasModule.sample) against baselines on the same validation batches:", table]
    outputs = []
    if trainer.log_dir is not None and trainer.loggers:
        outputs.append(f"  logs and TensorBoard events: {trainer.log_dir}")
    for callback in trainer.callbacks:
        for attribute, what in (("save_dir", "pictures"), ("dirpath", "checkpoints")):
            folder = getattr(callback, attribute, None)
            if folder is not None:
                outputs.append(f"  {what} ({type(callback).__name__}): {folder}")
    if outputs:
        lines += ["Outputs:", *outputs]
    if trainer.loggers:
        root = trainer.loggers[0].save_dir or trainer.default_root_dir
        lines.append(f"Open the logs with: tensorboard --logdir {root}")
    return "\n".join(lines)


def resolve_datamodule_names(args: list[str], registry: PluginRegistry) -> list[str]:
    """Turn ``--data=NAME`` (a name ``canvas-engineering plugins`` lists) into the class's import path.

    Class names (``--data=CartPoleDataModule``) and dotted paths pass through unchanged, as do
    options that are not ``--data`` itself (``--data.root=...``).
    """
    names = {entry.name: entry.obj for entry in registry.datamodules.entries()}
    out = list(args)
    for i, arg in enumerate(out):
        if arg.startswith("--data="):
            value, prefix, at = arg[len("--data=") :], "--data=", i
        elif arg == "--data" and i + 1 < len(out):
            value, prefix, at = out[i + 1], "", i + 1
        else:
            continue
        cls = names.get(value)
        if cls is not None:
            out[at] = f"{prefix}{cls.__module__}.{cls.__qualname__}"
    return out


def _schema_dict(schema: Any) -> dict[str, Any]:
    return schema.to_dict()


def run_lightning_cli(args: ArgsType = None, run: bool = True, registry: PluginRegistry | None = None) -> CanvasCLI:
    """Run the CLI (``args`` as a list, like ``sys.argv[1:]``).

    Args:
        args: the arguments; ``None``: LightningCLI reads ``sys.argv``.
        run: run the subcommand (``False``: only parse and instantiate).
        registry: the plugin registry to take datamodules from (see :class:`CanvasCLI`).

    Returns:
        The CLI, with its ``model``, ``datamodule`` and ``trainer``.

    """
    from canvas_engineering.datamodules import CanvasDataModule

    args = list(args) if args is not None else None
    registry = registry if registry is not None else get_registry()
    if args is None:  # LightningCLI would read sys.argv: resolve the datamodule names there
        import sys

        sys.argv[1:] = resolve_datamodule_names(sys.argv[1:], registry)
    else:
        args = resolve_datamodule_names(args, registry)
    defaults = {"fit": {"default_config_files": [QUICKSTART_CONFIG]}}
    return CanvasCLI(
        CanvasModule,
        CanvasDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        parser_kwargs=defaults,
        args=args,
        run=run,
        registry=registry,
    )
