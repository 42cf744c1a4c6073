"""LightningCLI over :class:`CanvasModule` and the registered datamodules.

``canvas-engineering fit`` with no ``--config`` trains the packaged quick start
(``configs/quickstart.yaml``); any ``--trainer.*``, ``--model.*`` or ``--data.*`` flag still
applies, and ``--data=NAME`` (a datamodule ``canvas-engineering plugins`` lists) starts from
that datamodule's own defaults. The datamodule's ``schema``, ``region_formats`` and
``normalization`` are linked into the model, so a config only says which data to use.

Every run writes into its own versioned folder, the logger's ``log_dir``:
``<--trainer.default_root_dir, default runs>/<datamodule name>/version_<N>/`` holds the
TensorBoard events, ``config.yaml``, ``checkpoints/``, ``loops/``, ``pictures/`` and
``predictions/``. ``validate``, ``test`` and ``predict`` with ``--ckpt_path`` and no
``--config`` reuse the ``config.yaml`` of the run the checkpoint belongs to.

Bad options and components that fail to build raise :class:`CommandLineError` with a
one-line message (``canvas-engineering`` prints it and exits with status 2). Options are
never abbreviated.
"""

from __future__ import annotations

import argparse
import atexit
import difflib
import importlib
import os
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter, Checkpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from canvas_engineering.callbacks.metrics import HParamsMetric
from canvas_engineering.callbacks.predictions import INDEX_FILE, CanvasPredictionWriter
from canvas_engineering.errors import CanvasError, CanvasValidationError, UnknownPluginError
from canvas_engineering.plugin_host.host import get_registry
from canvas_engineering.training.future_metrics import future_metrics_table
from canvas_engineering.training.module import CanvasModule

if TYPE_CHECKING:
    from canvas_engineering.plugin_host.registry import PluginRegistry

__all__ = [
    "DEFAULT_ROOT_DIR",
    "QUICKSTART_CONFIG",
    "SUBCOMMANDS",
    "CanvasCLI",
    "CommandLineError",
    "datamodule_name",
    "fit_summary",
    "resolve_datamodule_names",
    "run_lightning_cli",
    "run_summary",
]

#: The packaged quick-start configuration.
QUICKSTART_CONFIG = str(resources.files("canvas_engineering") / "configs" / "quickstart.yaml")

#: Lightning's subcommands (their one-line help is ``canvas_engineering.cli.commands.LIGHTNING_COMMANDS``).
SUBCOMMANDS = ("fit", "validate", "test", "predict")

#: Where runs go when ``--trainer.default_root_dir`` is not given.
DEFAULT_ROOT_DIR = "runs"

_PARSER_KWARGS = {"exit_on_error": False, "allow_abbrev": False}


class CommandLineError(CanvasValidationError):
    """The command line or its configuration cannot be used: a bad option, or a component fails to build.

    The message is one line: what is wrong, what to do, and the valid choices when there are some.
    """


_NOISE = (
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Does not validate against any of the",
    "Given value: Namespace",
    "Given value: NestedArg",
    "Expected a <class 'NoneType'>",
)


def _condense(text: str, limit: int = 300) -> str:
    """Keep the informative lines of a jsonargparse message (not its list of union subtypes), joined by '; '."""
    lines = [ln.strip().lstrip("- ").strip() for ln in text.splitlines()]
    lines = [ln.rstrip(":") for ln in lines if ln and not ln.startswith(_NOISE)]
    lines = [ln for ln in lines if not ln.startswith("Expected a path but")] or lines
    detail = re.sub(r"<class '([\w.]+)'>", r"\1", "; ".join(dict.fromkeys(lines)))
    return detail if len(detail) <= limit else detail[: limit - 3] + "..."


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text or type(err).__name__


class CanvasCLI(LightningCLI):
    """LightningCLI that links the datamodule's canvas into the model and gives every run its own folder.

    On top of :class:`~lightning.pytorch.cli.LightningCLI`:

    * unless the configuration sets a logger, a ``TensorBoardLogger`` writes to
      ``<default_root_dir>/<datamodule name>/version_<N>`` (``default_root_dir`` defaults to ``runs``);
    * :class:`~canvas_engineering.callbacks.HParamsMetric` makes ``hp_metric`` the validation loss,
      and ``predict`` writes its outputs with :class:`~canvas_engineering.callbacks.CanvasPredictionWriter`
      unless the configuration has a prediction writer;
    * parsing errors and failures to build the datamodule, model, callbacks or trainer raise
      :class:`CommandLineError` (one line; the original exception is its ``__cause__``);
    * each subcommand ends with :func:`run_summary`.

    Args:
        *args: passed to :class:`~lightning.pytorch.cli.LightningCLI`.
        registry: the plugin registry whose datamodules the CLI offers; built before the
            parser so every registered datamodule class is imported and resolves by name.
            ``None``: the default plugin host's.
        **kwargs: passed to :class:`~lightning.pytorch.cli.LightningCLI`.

    Raises:
        CommandLineError: an option is unknown or invalid, or a component fails to build.

    """

    def __init__(self, *args: Any, registry: PluginRegistry | None = None, **kwargs: Any) -> None:
        self.registry = registry if registry is not None else get_registry()
        self._running = False
        try:
            super().__init__(*args, **kwargs)
        except argparse.ArgumentError as err:
            raise CommandLineError(self._explain(err)) from err
        except CanvasError:
            raise  # the project's own message already says what is wrong
        except Exception as err:
            if self._running:
                raise  # a failure while training is not a usage error: keep the traceback
            msg = f"could not build the run: {_condense(str(err)) or type(err).__name__}"
            raise CommandLineError(msg) from err

    # -- parsing -------------------------------------------------------------------------

    def _explain(self, err: argparse.ArgumentError) -> str:
        """Turn jsonargparse's multi-line message into one line with the fix."""
        text = str(err)
        sub = getattr(self, "_cli_subcommand", None)
        help_hint = f"see `canvas-engineering {sub or ''} --help`".replace("  ", " ")
        unknown = re.match(r"unrecognized arguments: (.*)", text, re.S)
        if unknown:
            parts = []
            known = self._known_options(sub)
            for arg in unknown.group(1).split():
                if not arg.startswith("-"):
                    parts.append(f"unexpected argument {arg!r}")
                    continue
                option = arg.split("=", 1)[0]
                close = difflib.get_close_matches(option, known, n=3, cutoff=0.8)
                parts.append(f"unknown option {option}" + (f" (did you mean {' or '.join(close)}?)" if close else ""))
            return f"{'; '.join(parts)}; options are spelled out in full, {help_hint}"
        key = re.match(r'Parser key "([^"]+)":(.*)', text, re.S)
        if key:
            detail = _condense(key.group(2))
            hint = ""
            if key.group(1) == "data" and sub in ("validate", "test", "predict"):
                hint = "; give --config, or --ckpt_path of a run whose folder holds its config.yaml"
            return f"--{key.group(1)}: {detail}{hint}; {help_hint}"
        hint = ""
        if sub in ("validate", "test", "predict") and f"{sub}.data" in text:
            hint = "; give --config, or --ckpt_path of a run whose folder holds its config.yaml"
        return f"{_one_line(err)}{hint}; {help_hint}"

    def _known_options(self, subcommand: str | None) -> list[str]:
        parsers = getattr(self, "_subcommand_parsers", {})
        parser = parsers.get(subcommand) if subcommand else None
        parser = parser or getattr(self, "parser", None)
        return [o for o in getattr(parser, "_option_string_actions", {}) if o.startswith("--")]

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse like LightningCLI, remembering the subcommand for error messages."""
        import sys

        given = args if isinstance(args, list) else sys.argv[1:] if args is None else []
        self._cli_subcommand = next((a for a in given if a in SUBCOMMANDS), None)
        super().parse_arguments(parser, args)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the datamodule's schema, region formats and normalisation statistics into the model."""
        parser.link_arguments("data.schema", "model.schema", compute_fn=_schema_dict, apply_on="instantiate")
        parser.link_arguments("data.region_formats", "model.region_formats", apply_on="instantiate")
        parser.link_arguments("data.normalization", "model.normalization", apply_on="instantiate")
        parser.set_defaults({"trainer.default_root_dir": DEFAULT_ROOT_DIR})

    # -- building ------------------------------------------------------------------------

    def before_instantiate_classes(self) -> None:
        """Hand the CLI's registry to the model when the model takes one (its backbone comes from it)."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        model = config.get("model")
        # set after parsing (a registry is not a config value), and only when it is not the default one
        # the model falls back to: a saved config.yaml then holds no unserialisable object
        if model is not None and "registry" in model and self.registry is not get_registry():
            model.registry = self.registry

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """Build the trainer with the run-folder logger and the default callbacks (see the class docs)."""
        config = self._get(self.config_init, "trainer", default={}) or {}
        if config.get("logger") in (None, True) and "logger" not in kwargs:
            root = config.get("default_root_dir") or DEFAULT_ROOT_DIR
            kwargs["logger"] = TensorBoardLogger(save_dir=root, name=datamodule_name(self.datamodule, self.registry))
        trainer = super().instantiate_trainer(**kwargs)
        callbacks = trainer.callbacks
        if trainer.loggers and not any(isinstance(c, HParamsMetric) for c in callbacks):
            callbacks.append(HParamsMetric())
        if self.subcommand == "predict" and not any(isinstance(c, BasePredictionWriter) for c in callbacks):
            callbacks.append(CanvasPredictionWriter())
        return trainer

    # -- running -------------------------------------------------------------------------

    def before_fit(self) -> None:
        """Mark the run as started (failures from here on keep their traceback)."""
        self._running = True

    before_validate = before_test = before_predict = before_fit

    @rank_zero_only
    def after_fit(self) -> None:
        """Print the sampled-future metrics against the baselines and where the outputs went."""
        print(run_summary(self.trainer, "fit"), flush=True)

    @rank_zero_only
    def after_validate(self) -> None:
        """Print the metrics and where the outputs went."""
        print(run_summary(self.trainer, "validate"), flush=True)

    @rank_zero_only
    def after_test(self) -> None:
        """Print the metrics and where the outputs went."""
        print(run_summary(self.trainer, "test"), flush=True)

    @rank_zero_only
    def after_predict(self) -> None:
        """Print where the prediction files went."""
        print(run_summary(self.trainer, "predict"), flush=True)


def datamodule_name(datamodule: Any, registry: PluginRegistry | None = None) -> str:
    """Return the registered name of ``datamodule``'s class (``bouncing_balls``), else its class name in snake case."""
    if datamodule is None:
        return "run"
    cls = type(datamodule)
    if registry is not None:
        for entry in registry.datamodules.entries():
            if entry.obj is cls:
                return entry.name
    name = cls.__name__.removesuffix("DataModule") or cls.__name__
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _outputs(trainer: pl.Trainer) -> list[str]:
    lines = []
    log_dir = trainer.log_dir if trainer.loggers else None
    if log_dir is not None:
        lines.append(f"  run folder (TensorBoard events, config.yaml): {log_dir}")
    for callback in trainer.callbacks:
        name = type(callback).__name__
        if isinstance(callback, Checkpoint):
            folder = getattr(callback, "dirpath", None)
            last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
            if folder is not None and Path(folder).exists():
                lines.append(f"  checkpoints ({name}): {folder}" + (f" (latest: {Path(last).name})" if last else ""))
        if isinstance(callback, BasePredictionWriter):
            folder = getattr(callback, "output_dir", None)
            files = getattr(callback, "written", [])
            if folder is not None:
                lines.append(f"  predictions ({name}): {folder} ({len(files)} files, index {INDEX_FILE})")
        for attribute, what in (("save_dir", "pictures"), ("dirpath", "loop checkpoints")):
            folder = getattr(callback, attribute, None)
            if folder is not None and not isinstance(callback, Checkpoint) and Path(folder).exists():
                lines.append(f"  {what} ({name}): {folder}")
    return lines


def run_summary(trainer: pl.Trainer, subcommand: str = "fit") -> str:
    """Report the end of a run: its final metrics, every output folder and the TensorBoard command."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
    lines = [f"Finished at step {trainer.global_step} ({subcommand})."]
    losses = {k: v for k, v in metrics.items() if k.endswith("/loss") and k.count("/") == 1}
    if losses:
        lines.append("Final metrics: " + ", ".join(f"{k}={v:.4f}" for k, v in sorted(losses.items())))
    if "val/loss" in metrics and subcommand == "fit":
        lines.append(f"hp_metric (TensorBoard HPARAMS) = val/loss = {metrics['val/loss']:.4f}")
    table = future_metrics_table(metrics)
    if table:
        lines += ["Sampled future (CanvasModule.sample) against baselines on the same validation batches:", table]
    outputs = _outputs(trainer)
    if outputs:
        lines += ["Outputs:", *outputs]
    if trainer.loggers:
        root = trainer.loggers[0].save_dir or trainer.default_root_dir
        lines.append(f"Open the logs with: tensorboard --logdir {root}")
    return "\n".join(lines)


def fit_summary(trainer: pl.Trainer) -> str:
    """Report the end of a fit (:func:`run_summary` of ``"fit"``)."""
    return run_summary(trainer, "fit")


def _import_class(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def resolve_datamodule_names(args: list[str], registry: PluginRegistry) -> list[str]:
    """Turn ``--data=NAME`` (a name ``canvas-engineering plugins`` lists) into the class's import path.

    Class names (``--data=CartPoleDataModule``) and dotted paths pass through unchanged, as do
    options that are not ``--data`` itself (``--data.root=...``).

    Raises:
        UnknownPluginError: ``NAME`` is neither a registered name, a registered class's name, nor a dotted path;
            the message lists the registered datamodules.

    """
    names = {entry.name: entry.obj for entry in registry.datamodules.entries()}
    class_names = {cls.__name__ for cls in names.values()}
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
        elif "." not in value and value not in class_names and not value.lstrip().startswith(("{", "class_path")):
            raise UnknownPluginError("datamodule", value, sorted(names))
    return out


def _schema_dict(schema: Any) -> dict[str, Any]:
    return schema.to_dict()


def _option_value(args: list[str], option: str) -> str | None:
    for i, arg in enumerate(args):
        if arg.startswith(option + "="):
            return arg[len(option) + 1 :]
        if arg == option and i + 1 < len(args):
            return args[i + 1]
    return None


def _has_config(args: list[str]) -> bool:
    return any(a in ("-c", "--config") or a.startswith("--config=") for a in args)


def _run_config(ckpt_path: str) -> Path | None:
    """Return the ``config.yaml`` Lightning's SaveConfigCallback wrote in a checkpoint's run folder (or beside it)."""
    ckpt = Path(ckpt_path)
    for folder in (ckpt.parent, ckpt.parent.parent):
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    return None


def _quickstart_without_data() -> str:
    """Write the quick start minus its datamodule (a switched ``--data`` starts from its own defaults)."""
    config = yaml.safe_load(Path(QUICKSTART_CONFIG).read_text())
    config.pop("data", None)
    fd, path = tempfile.mkstemp(prefix="canvas-quickstart-", suffix=".yaml")
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(config, f)
    atexit.register(lambda: Path(path).unlink(missing_ok=True))
    return path


def _fit_defaults(args: list[str]) -> list[str]:
    """Default config files of ``fit``: the quick start, without its datamodule when ``--data`` picks another."""
    data = _option_value(args, "--data")
    if data is None or _has_config(args):
        return [QUICKSTART_CONFIG]
    quick = yaml.safe_load(Path(QUICKSTART_CONFIG).read_text())["data"]["class_path"]
    same = _import_class(data) is not None and _import_class(data) is _import_class(quick)
    same = same or data.rsplit(".", 1)[-1] == quick.rsplit(".", 1)[-1]
    return [QUICKSTART_CONFIG] if same else [_quickstart_without_data()]


def prepare_args(args: list[str], registry: PluginRegistry) -> tuple[list[str], dict[str, Any]]:
    """Resolve datamodule names, add a checkpoint's run config, and choose the parser defaults.

    Returns:
        The arguments to parse and LightningCLI's ``parser_kwargs``.

    """
    args = resolve_datamodule_names(args, registry)
    sub = next((a for a in args if a in SUBCOMMANDS), None)
    ckpt = _option_value(args, "--ckpt_path")
    if sub in ("validate", "test", "predict") and ckpt and not _has_config(args):
        config = _run_config(ckpt)
        if config is not None:  # the run's own settings (data, trainer, callbacks) come back
            at = args.index(sub) + 1
            args = [*args[:at], "--config", str(config), *args[at:]]
    kwargs: dict[str, Any] = {name: dict(_PARSER_KWARGS) for name in SUBCOMMANDS}
    kwargs.update(_PARSER_KWARGS)
    kwargs["fit"]["default_config_files"] = _fit_defaults(args) if sub == "fit" else [QUICKSTART_CONFIG]
    return args, kwargs


def run_lightning_cli(args: ArgsType = None, run: bool = True, registry: PluginRegistry | None = None) -> CanvasCLI:
    """Run the CLI (``args`` as a list, like ``sys.argv[1:]``).

    Args:
        args: the arguments; ``None``: ``sys.argv[1:]``.
        run: run the subcommand (``False``: only parse and instantiate).
        registry: the plugin registry to take datamodules from (see :class:`CanvasCLI`).

    Returns:
        The CLI, with its ``model``, ``datamodule`` and ``trainer``.

    Raises:
        CommandLineError: see :class:`CanvasCLI`.
        UnknownPluginError: ``--data`` names no registered datamodule.

    """
    import sys

    from canvas_engineering.datamodules import CanvasDataModule

    registry = registry if registry is not None else get_registry()
    prepared, parser_kwargs = prepare_args(list(sys.argv[1:] if args is None else args), registry)
    if args is None:  # LightningCLI reads sys.argv (it warns when given both): put the prepared ones there
        sys.argv[1:] = prepared
    args = None if args is None else prepared
    return CanvasCLI(
        CanvasModule,
        CanvasDataModule,
        subclass_mode_data=True,
        seed_everything_default=0,
        parser_kwargs=parser_kwargs,
        args=args,
        run=run,
        registry=registry,
    )
