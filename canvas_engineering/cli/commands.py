"""The ``canvas-engineering`` command.

Lightning's subcommands (``fit``, ``validate``, ``test``, ``predict``) run the
:mod:`~canvas_engineering.cli.lightning_cli`; the project's own tools (``demo``, ``schema``,
``plugins``, ``rollout``) are plain argparse commands. ``--help`` lists them all, ``--version``
prints the package version. A bad option, name or file prints one ``error:`` line on stderr and
exits with status 2; ``--traceback`` (or ``CANVAS_ENGINEERING_TRACEBACK=1``) shows the full
Python traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from canvas_engineering.plugin_host.host import get_registry

if TYPE_CHECKING:
    from canvas_engineering.plugin_host.registry import PluginRegistry

__all__ = ["LIGHTNING_COMMANDS", "TOOLS", "TRACEBACK_ENV", "main"]

#: Lightning's subcommands and their one-line help (the options come from the LightningCLI).
LIGHTNING_COMMANDS = {
    "fit": "train a model (no --config: the packaged quick start); outputs in runs/<data>/version_N",
    "validate": "one validation pass; with --ckpt_path, the checkpoint's run config is reused",
    "test": "one test pass; with --ckpt_path, the checkpoint's run config is reused",
    "predict": "sample the test split's future and write prediction files (safetensors + JSON index)",
}

#: Environment variable that, set to 1, shows full tracebacks like ``--traceback``.
TRACEBACK_ENV = "CANVAS_ENGINEERING_TRACEBACK"


def _demo(args: argparse.Namespace) -> int:
    from canvas_engineering.compilation.compiler import compile_topology
    from canvas_engineering.typed.presets import robot_manipulation_schema
    from canvas_engineering.viz import layout_figure, mask_figure, save_figure

    schema = robot_manipulation_schema()
    print(schema.summary())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = compile_topology(schema.layout, schema.topology)
    written = [
        save_figure(layout_figure(schema.layout), out / "layout.png"),
        save_figure(mask_figure(plan), out / "attention_mask.png"),
    ]
    schema.to_json(out / "schema.json")
    for path in written + [out / "schema.json"]:
        print(f"wrote {path}")
    return 0


def _one_line(err: BaseException) -> str:
    """Return ``err``'s message on one line (the class name when it has none)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__


def _schema(args: argparse.Namespace) -> int:
    from canvas_engineering.compilation.compiler import compile_topology
    from canvas_engineering.declare.schema import CanvasSchema
    from canvas_engineering.errors import CanvasError

    try:
        schema = CanvasSchema.from_json(Path(args.file))
    except (CanvasError, OSError, ValueError, RecursionError, MemoryError) as err:
        # every bad file: one line on stderr (the loader names the file and the rule) and exit status 2
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2
    print(schema.summary())
    if args.png:
        from canvas_engineering.viz import layout_figure, mask_figure, save_figure

        stem = Path(args.png)
        stem.parent.mkdir(parents=True, exist_ok=True)
        save_figure(layout_figure(schema.layout), stem.with_name(stem.stem + "_layout.png"))
        plan = compile_topology(schema.layout, schema.topology)
        written = save_figure(mask_figure(plan), stem.with_name(stem.stem + "_mask.png"))
        print(f"wrote {stem.with_name(stem.stem + '_layout.png')}")
        print(f"wrote {written}")
    return 0


def _plugins(args: argparse.Namespace, registry: PluginRegistry) -> int:
    rows = [
        {"name": e.name, "kind": e.kind, "distribution": e.distribution, "version": e.version, "source": e.source}
        for e in registry.entries()
    ]
    if args.json:  # exactly the documented keys; the table also shows the source module
        keys = ("name", "kind", "distribution", "version")
        print(json.dumps([{k: r[k] for k in keys} for r in rows], indent=2))
        return 0
    cols = ["kind", "name", "distribution", "version", "source"]
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in cols}
    for row in [dict(zip(cols, cols, strict=True))] + rows:
        print("  ".join(row[c].ljust(widths[c]) for c in cols).rstrip())
    return 0


TOOLS = ("demo", "schema", "plugins", "rollout")


def _tools(argv: Sequence[str], registry: PluginRegistry | None) -> int:
    args = _tools_parser(registry).parse_args(argv)
    return args.run(args)


def _tools_parser(registry: PluginRegistry | None) -> argparse.ArgumentParser:
    """Return the parser of the project's own tools (one subparser per name in :data:`TOOLS`)."""
    parser = argparse.ArgumentParser(prog="canvas-engineering", allow_abbrev=False)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="declare the seed's robot canvas, print it and draw it")
    demo.add_argument("--out", default="runs/demo", help="folder for the pictures and schema.json")
    demo.set_defaults(run=_demo)
    schema = sub.add_parser("schema", help="summarise (and draw) a schema JSON file")
    schema.add_argument("file")
    schema.add_argument("--png", help="write <stem>_layout.png and <stem>_mask.png")
    schema.set_defaults(run=_schema)
    plugins = sub.add_parser("plugins", help="list the registered attention types, backbones and datamodules")
    plugins.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    plugins.set_defaults(run=lambda args: _plugins(args, registry if registry is not None else get_registry()))
    from canvas_engineering.cli.rollout import add_rollout_parser

    add_rollout_parser(sub)
    for subparser in sub.choices.values():  # options are spelled out in full, as in the LightningCLI
        subparser.allow_abbrev = False
    return parser


def _tool_help(registry: PluginRegistry | None) -> dict[str, str]:
    """Return the one-line help of every tool of :data:`TOOLS`, from its subparser."""
    parser = _tools_parser(registry)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return {name: helps.get(name, "") for name in TOOLS}


def _help(registry: PluginRegistry | None) -> str:
    """Return the top-level help: every command with one line, then the global options."""
    from canvas_engineering._version import __version__

    commands = {**LIGHTNING_COMMANDS, **_tool_help(registry)}
    width = max(map(len, commands)) + 2
    lines = [
        "usage: canvas-engineering [--version] [--traceback] COMMAND [options]",
        "",
        f"canvas-engineering {__version__}: structured latent canvases for diffusion transformers.",
        "",
        "commands:",
        *(f"  {name.ljust(width)}{text}" for name, text in commands.items()),
        "",
        "options:",
        "  -h, --help    show this message",
        "  --version     print the version and exit",
        f"  --traceback   show the full Python traceback on errors (or {TRACEBACK_ENV}=1)",
        "",
        "`canvas-engineering COMMAND --help` shows a command's options.",
    ]
    return "\n".join(lines)


def _error(message: str, hint: str | None = None) -> int:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(hint, file=sys.stderr)
    return 2


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("\N{ELECTRIC LIGHT BULB} Tip")


def _quiet() -> None:
    """Silence the noise of other packages that the project cannot fix (each with its reason)."""
    # Lightning 2.6's own pytree helper calls torch's deprecated `isinstance(x, LeafSpec)`; fixed upstream only.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Every run has its own folder by design: a checkpoint's ModelCheckpoint folder always differs from the new one.
    warnings.filterwarnings("ignore", message=r"The dirpath has changed from")
    # Lightning 2.6's CLI calls jsonargparse APIs deprecated in jsonargparse 4.49 (reported to the caller, Lightning).
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"lightning\.pytorch\.cli")
    # main(argv) is the in-process API: passing argv while sys.argv holds the host program's arguments is intended.
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    # Lightning advertises its cloud logger at every Trainer construction: an advert, not a diagnostic.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DropTips())


def main(argv: Sequence[str] | None = None, registry: PluginRegistry | None = None) -> int:
    """Entry point of the ``canvas-engineering`` console script.

    ``demo``, ``schema``, ``plugins`` and ``rollout`` are our own tools; ``fit``,
    ``validate``, ``test`` and ``predict`` go to the LightningCLI of
    :mod:`canvas_engineering.cli.lightning_cli`, whose ``fit`` trains the packaged quick start
    when no ``--config`` is given. ``--help`` (or no command) lists them all.

    Args:
        argv: the arguments, like ``sys.argv[1:]`` (``None``: read ``sys.argv``).
        registry: the plugin registry ``plugins`` lists and the LightningCLI loads its
            datamodules from; ``None``: the default plugin host's (loaded on first use).

    Returns:
        The process exit code: 0, or 2 after a one-line ``error:`` on stderr for a bad option,
        name, file, or a component that cannot be built (``--traceback``: the exception propagates).

    """
    args = list(sys.argv[1:] if argv is None else argv)
    traceback = "--traceback" in args or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")
    args = [a for a in args if a != "--traceback"]
    first = args[0] if args else None
    if first is None or first in ("-h", "--help"):
        print(_help(registry), file=sys.stdout if first else sys.stderr)
        return 0 if first else 2
    if first in ("--version", "-V"):
        from canvas_engineering._version import __version__

        print(f"canvas-engineering {__version__}")
        return 0
    if first in TOOLS:
        return _tools(args, registry)
    known = [*LIGHTNING_COMMANDS, *TOOLS]
    if first not in LIGHTNING_COMMANDS and not (first.startswith("-") and any(a in LIGHTNING_COMMANDS for a in args)):
        close = difflib.get_close_matches(first, known, n=1)
        guess = f" (did you mean {close[0]}?)" if close else ""
        return _error(
            f"unknown command {first!r}{guess}; commands: {', '.join(known)}",
            "`canvas-engineering --help` describes each one.",
        )
    _quiet()
    # Lazy: the training stack (lightning) is only needed past this point.
    from canvas_engineering.cli.lightning_cli import run_lightning_cli
    from canvas_engineering.errors import CanvasError

    if argv is None:
        sys.argv[1:] = args  # without --traceback
    try:
        run_lightning_cli(None if argv is None else args, registry=registry)  # None: LightningCLI reads sys.argv
    except CanvasError as err:
        if traceback:
            raise
        return _error(_one_line(err), f"(add --traceback or set {TRACEBACK_ENV}=1 for the full Python traceback)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
