"""The declared attention function types of the seed's lineup.

``ATTENTION_TYPES`` maps each of the 16 declared names to a one-line description; it is
the *vocabulary* a topology may use. Which types can actually run is decided by a plugin
registry (installed built-ins, the CogVideoX-native type and third-party types);
:func:`check_attention_type` accepts a name from either.

A declared name is accepted without consulting any registry, so declaring a canvas in the
vocabulary imports no plugin. Any other name is checked against the installed types: the
ones a caller passes (``installed=``, e.g. a ``PluginHost``'s registry), else the default
plugin host's. The execution layer (``CanvasAttention``) checks again against the registry
it builds its operators from.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import MappingProxyType

from canvas_engineering.errors import UnknownAttentionTypeError
from canvas_engineering.plugin_host.host import default_host

__all__ = ["ATTENTION_TYPES", "DEFAULT_ATTENTION", "check_attention_type", "installed_attention_types"]

#: The global default when neither the connection nor the source region names a type.
DEFAULT_ATTENTION = "cross_attention"

#: The 16 declared attention function types, name -> one-line description (read-only).
ATTENTION_TYPES: MappingProxyType[str, str] = MappingProxyType(
    {
        "cross_attention": "Dot-product, O(NM): softmax QKV attention; general-purpose content-based selection.",
        "linear_attention": (
            "Dot-product, O(N+M): kernel feature map instead of softmax; low-dim or high-frequency streams."
        ),
        "cosine_attention": (
            "Dot-product, O(NM): cosine-similarity logits with a fixed scale; stable gradients, no temperature."
        ),
        "sigmoid_attention": (
            "Dot-product, O(NM): independent sigmoid per key instead of softmax; non-exclusive attention."
        ),
        "gated": (
            "Gating, O(NM): cross-attention behind a learned sigmoid gate; optional conditioning (goals, instructions)."
        ),
        "perceiver": "Compression, O(NK): keys compressed through a learned latent bottleneck; large dst regions.",
        "pooling": (
            "Compression, O(N+M): mean-pooled dst summary broadcast to every query; scalar/low-dim conditioning."
        ),
        "copy": "Transfer, O(N): direct latent relay from aligned dst positions; broadcast regions, latent sharing.",
        "mamba": (
            "State-space, O(N): selective (input-dependent) state-space scan; long temporal sequences, causal links."
        ),
        "rwkv": "State-space, O(N): recurrence with learned exponential decay; temporal connections.",
        "hyena": "Convolution, O(N log N): FFT long convolution with data-dependent gating; sub-quadratic long range.",
        "sparse_attention": "Sparse, O(NK): only the top-k logits per query survive; selective binding to positions.",
        "local_attention": "Sparse, O(NW): attention within a spatial window on the H x W grid; neighbouring patches.",
        "none": "Meta, O(0): edge declared but disabled; ablations.",
        "random_fixed": (
            "Meta, O(NK): a random key subset frozen at init; baseline for whether learned structure matters."
        ),
        "mixture": "Meta, O(NK): learned routing over expert attention heads; multi-modal hubs.",
    }
)


def installed_attention_types() -> list[str]:
    """Return the attention types installed in the default plugin host, sorted.

    Builds the default host's registry on first call (which imports the plugins). Returns
    ``[]`` while the host is importing an entry point (a plugin module that declares a
    ``Connection`` at import time: nothing is installed yet) and the names registered so
    far while its registry is being built.
    """
    registry = default_host().available_registry()
    return registry.attention_types.names() if registry is not None else []


def check_attention_type(name: object, where: str, installed: Iterable[str] | None = None) -> str:
    """Return ``name`` if it is a declared or installed attention type, else raise.

    Args:
        name: the type name to check.
        where: what declared it, for the message (e.g. ``"connection 'a'->'b'"``).
        installed: the installed type names to accept besides the declared vocabulary (e.g.
            ``host.registry().attention_types``). ``None``: the default plugin host's,
            looked up only when ``name`` is not a declared type.

    Raises:
        UnknownAttentionTypeError: naming ``where`` and listing the known types.

    """
    if isinstance(name, str) and name in ATTENTION_TYPES:
        return name
    # Only a name outside the vocabulary needs the installed set (and maybe a plugin load).
    names = set(installed_attention_types() if installed is None else installed)
    if isinstance(name, str) and name in names:
        return name
    known = ", ".join(sorted(set(ATTENTION_TYPES) | names))
    msg = f"{where}: unknown attention type {name!r}; known types: {known}"
    raise UnknownAttentionTypeError(msg)
