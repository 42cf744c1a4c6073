"""Builders of ``CanvasModule``'s components: the region codecs and the backbone."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from canvas_engineering.errors import IncompatibleModelError
from canvas_engineering.models.region_codecs import RegionDecoder, RegionEncoder, RegionFormat
from canvas_engineering.plugin_host.host import PluginRegistry
from canvas_engineering.program import CanvasProgram
from canvas_engineering.training.arguments import module_key
from canvas_engineering.training.region_behaviour import RegionBehaviour
from canvas_engineering.training.write_modes import backbone_write_modes

__all__ = ["build_backbone", "build_codecs"]


def build_codecs(
    formats: Mapping[str, RegionFormat], program: CanvasProgram, regions: Mapping[str, RegionBehaviour]
) -> tuple[nn.ModuleDict, nn.ModuleDict]:
    """Build ``(encoders, decoders)``, keyed by :func:`module_key`, one pair per fed region.

    A region whose compile mode does not train its codec gets ``requires_grad=False`` on both,
    so AdamW never sees them.
    """
    layout = program.schema.layout
    encoders = nn.ModuleDict({module_key(n): RegionEncoder(f, layout, n) for n, f in formats.items()})
    decoders = nn.ModuleDict({module_key(n): RegionDecoder(f, layout, n) for n, f in formats.items()})
    for name in formats:
        if not regions[name].compile_mode.trains_codec:
            encoders[module_key(name)].requires_grad_(False)
            decoders[module_key(name)].requires_grad_(False)
    return encoders, decoders


def build_backbone(
    registry: PluginRegistry,
    name: str,
    program: CanvasProgram,
    config: Mapping[str, Any] | None,
    max_loops: int,
    freeze: str,
) -> nn.Module:
    """Build the registered backbone ``name`` over the program's execution topology.

    Args:
        registry: where the backbone is looked up.
        name: its registered name.
        program: the model's program (its execution topology; write modes other than the plain
            sum are passed as ``write_modes``).
        config: keyword arguments of the backbone factory (explicit ones win).
        max_loops: loops of each looped block.
        freeze: freeze strategy for pretrained backbones (``"none"``: not passed).

    Raises:
        UnknownPluginError: no backbone of that name is registered (lists the available ones).
        IncompatibleModelError: its factory returned something that is not an ``nn.Module``
            (names the backbone and the distribution that registered it).

    """
    kwargs = dict(config or {})
    kwargs.setdefault("max_loops", max_loops)
    if freeze != "none":  # from-scratch backbones take no freeze strategy
        kwargs.setdefault("freeze", freeze)
    write_modes = backbone_write_modes(program.execution_write_modes())
    if write_modes is not None:
        kwargs.setdefault("write_modes", write_modes)
    entry = registry.backbones[name]
    backbone = entry.obj(program.schema.layout, program.execution_topology(), **kwargs)
    if not isinstance(backbone, nn.Module):
        msg = (
            f"backbone {name!r} from {entry.provider}: its factory returned {type(backbone).__qualname__}, "
            "not an nn.Module (a backbone factory must return the module, e.g. a CanvasBackbone)"
        )
        raise IncompatibleModelError(msg)
    return backbone
