"""The ``canvas-engineering`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from canvas_engineering.plugin_host.host import get_registry

if TYPE_CHECKING:
    from canvas_engineering.plugin_host.registry import PluginRegistry

__all__ = ["main"]


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
        save_figure(mask_figure(plan), stem.with_name(stem.stem + "_mask.png"))
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
    parser = argparse.ArgumentParser(prog="canvas-engineering", description=__doc__)
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
    args = parser.parse_args(argv)
    return args.run(args)


def main(argv: Sequence[str] | None = None, registry: PluginRegistry | None = None) -> int:
    """Entry point of the ``canvas-engineering`` console script.

    ``demo``, ``schema`` and ``plugins`` are our own tools; everything else (``fit``,
    ``validate``, ``test``, ``predict``, ``--help``) goes to the LightningCLI of
    :mod:`canvas_engineering.cli.lightning_cli`, whose ``fit`` trains the packaged quick start
    when no ``--config`` is given.

    Args:
        argv: the arguments, like ``sys.argv[1:]`` (``None``: read ``sys.argv``).
        registry: the plugin registry ``plugins`` lists and the LightningCLI loads its
            datamodules from; ``None``: the default plugin host's (loaded on first use).

    Returns:
        The process exit code.

    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in TOOLS:
        return _tools(args, registry)
    # Lazy: the training stack (lightning) is only needed past this point.
    from canvas_engineering.cli.lightning_cli import run_lightning_cli

    run_lightning_cli(None if argv is None else args, registry=registry)  # None: LightningCLI reads sys.argv
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
