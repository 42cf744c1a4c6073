"""canvas-engineering: structured latent canvases for diffusion transformers.

Declare a :class:`CanvasLayout` (a (T, H, W) grid split into named regions) and a
:class:`CanvasTopology` (which region attends to which, when, and how); compile them with
:func:`compile_topology` into attention masks, loss weights and frame maps.
"""

from __future__ import annotations

from canvas_engineering._version import __version__
from canvas_engineering.attention.attention_type import AttentionType, QKVAttentionType
from canvas_engineering.attention.canvas_attention import CanvasAttention
from canvas_engineering.compilation.attention_mask import AttentionMask
from canvas_engineering.compilation.compiler import AttentionPlan, BlockView, compile_topology
from canvas_engineering.declare.attention_vocabulary import ATTENTION_TYPES, DEFAULT_ATTENTION
from canvas_engineering.declare.layout import CanvasLayout
from canvas_engineering.declare.region import RegionSpec
from canvas_engineering.declare.schema import CanvasSchema, transfer_distance
from canvas_engineering.declare.spatiotemporal_canvas import SpatiotemporalCanvas
from canvas_engineering.declare.topology import AttentionOp, CanvasTopology, Connection, TemporalFill
from canvas_engineering.errors import (
    BatchValidationError,
    CanvasError,
    CanvasValidationError,
    CheckpointFileError,
    ConnectionValidationError,
    EpisodeDataError,
    GraftedSaveError,
    LayoutValidationError,
    LoopCheckpointError,
    NonFiniteLossError,
    PrecisionError,
    RegionValidationError,
    SchemaValidationError,
    UnknownAttentionTypeError,
    UnknownRegionError,
)
from canvas_engineering.integrations.cogvideox import (
    CanvasCogVideoXAttnProcessor,
    freeze_full,
    freeze_half,
    freeze_none,
    graft_looped_blocks,
    install_canvas_processor,
)
from canvas_engineering.integrations.grafted_io import (
    GraftedTransformer,
    load_grafted_transformer,
    save_grafted_transformer,
)
from canvas_engineering.models.action_head import ActionHead
from canvas_engineering.models.backbone import CanvasBackbone
from canvas_engineering.models.dit import CanvasBlock, CanvasDiT
from canvas_engineering.models.loop_checkpoint import load_loop_checkpoint, save_loop_checkpoint
from canvas_engineering.models.looped import LoopedBlockWrapper
from canvas_engineering.plugin_host.host import (
    DuplicateRegistrationError,
    PluginHost,
    PluginLoadWarning,
    UnknownPluginError,
    default_host,
    get_registry,
    hookimpl,
    register_plugin,
    unregister_plugin,
)
from canvas_engineering.program import (
    CanvasProgram,
    Clock,
    ConnectionProgram,
    ProgramCycleError,
    ProgramValidationError,
    RegionProgram,
)
from canvas_engineering.training.schedules import CurriculumScheduler, SharpeningSchedule
from canvas_engineering.typed.fields import (
    BoundSchema,
    Field,
    FieldValidationError,
    PackingError,
    RegionView,
    TypedSchemaError,
    compile_schema,
)
from canvas_engineering.typed.semantic import (
    SemanticConditioner,
    auto_semantic_type,
    compute_semantic_embeddings,
    hashing_embed,
)
from canvas_engineering.types import ConnectivityPolicy, LayoutStrategy  # published enums (compat alias)

# The training layer needs the `train` extra (lightning, torchmetrics, diffusers): import it
# on first use so the declarative core stays light.
_LAZY = {
    "CanvasModule": "canvas_engineering.training.module",
    "CanvasPolicy": "canvas_engineering.policy",
    "PolicyEvaluation": "canvas_engineering.policy",
    "PolicyError": "canvas_engineering.errors",
    "evaluate_policy": "canvas_engineering.policy",
    "RegionFormat": "canvas_engineering.models.region_codecs",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    msg = f"module 'canvas_engineering' has no attribute {name!r}"
    raise AttributeError(msg)

__all__ = [
    "BatchValidationError",
    "CanvasModule",
    "CanvasPolicy",
    "PolicyError",
    "PolicyEvaluation",
    "evaluate_policy",
    "NonFiniteLossError",
    "RegionFormat",
    "ATTENTION_TYPES",
    "DEFAULT_ATTENTION",
    "ActionHead",
    "AttentionMask",
    "AttentionOp",
    "AttentionPlan",
    "AttentionType",
    "BlockView",
    "BoundSchema",
    "CanvasAttention",
    "CanvasBackbone",
    "CanvasBlock",
    "CanvasCogVideoXAttnProcessor",
    "CanvasDiT",
    "CanvasLayout",
    "CanvasProgram",
    "CanvasSchema",
    "CanvasTopology",
    "CanvasError",
    "CanvasValidationError",
    "CheckpointFileError",
    "Clock",
    "Connection",
    "ConnectionProgram",
    "ConnectionValidationError",
    "ConnectivityPolicy",
    "CurriculumScheduler",
    "DuplicateRegistrationError",
    "EpisodeDataError",
    "Field",
    "FieldValidationError",
    "GraftedSaveError",
    "GraftedTransformer",
    "LayoutStrategy",
    "LayoutValidationError",
    "LoopCheckpointError",
    "LoopedBlockWrapper",
    "PackingError",
    "PluginHost",
    "PluginLoadWarning",
    "PrecisionError",
    "ProgramCycleError",
    "ProgramValidationError",
    "QKVAttentionType",
    "RegionProgram",
    "RegionSpec",
    "RegionValidationError",
    "RegionView",
    "SchemaValidationError",
    "SemanticConditioner",
    "SharpeningSchedule",
    "SpatiotemporalCanvas",
    "TemporalFill",
    "TypedSchemaError",
    "UnknownAttentionTypeError",
    "UnknownPluginError",
    "UnknownRegionError",
    "__version__",
    "auto_semantic_type",
    "compile_schema",
    "compile_topology",
    "compute_semantic_embeddings",
    "default_host",
    "freeze_full",
    "freeze_half",
    "freeze_none",
    "get_registry",
    "graft_looped_blocks",
    "hashing_embed",
    "hookimpl",
    "install_canvas_processor",
    "load_grafted_transformer",
    "load_loop_checkpoint",
    "register_plugin",
    "save_grafted_transformer",
    "save_loop_checkpoint",
    "transfer_distance",
    "unregister_plugin",
]
