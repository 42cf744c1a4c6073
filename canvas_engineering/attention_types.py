"""The declared attention function types of the seed's lineup.

``ATTENTION_TYPES`` maps each of the 16 declared names to a one-line description; it is
the *vocabulary* a topology may use. Which types can actually run is decided by the
plugin registry (installed built-ins, the CogVideoX-native type and third-party types);
:func:`check_attention_type` accepts a name from either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import MappingProxyType

from canvas_engineering.errors import UnknownAttentionTypeError

__all__ = ["ATTENTION_TYPES", "DEFAULT_ATTENTION", "check_attention_type", "set_installed_types_provider"]

#: The global default when neither the connection nor the source region names a type.
DEFAULT_ATTENTION = "cross_attention"

#: The 16 declared attention function types, name -> one-line description (read-only).
ATTENTION_TYPES: MappingProxyType[str, str] = MappingProxyType(
    {
        "cross_attention": "Dot-product, O(NM): softmax QKV attention; general-purpose content-based selection.",
        "linear_attention": "Dot-product, O(N+M): kernel feature map instead of softmax; low-dim or high-frequency streams.",
        "cosine_attention": "Dot-product, O(NM): cosine-similarity logits with a fixed scale; stable gradients, no temperature.",
        "sigmoid_attention": "Dot-product, O(NM): independent sigmoid per key instead of softmax; non-exclusive attention.",
        "gated": "Gating, O(NM): cross-attention behind a learned sigmoid gate; optional conditioning (goals, instructions).",
        "perceiver": "Compression, O(NK): keys compressed through a learned latent bottleneck; large dst regions.",
        "pooling": "Compression, O(N+M): mean-pooled dst summary broadcast to every query; scalar/low-dim conditioning.",
        "copy": "Transfer, O(N): direct latent relay from aligned dst positions; broadcast regions, latent sharing.",
        "mamba": "State-space, O(N): selective (input-dependent) state-space scan; long temporal sequences, causal links.",
        "rwkv": "State-space, O(N): recurrence with learned exponential decay; temporal connections.",
        "hyena": "Convolution, O(N log N): FFT long convolution with data-dependent gating; sub-quadratic long range.",
        "sparse_attention": "Sparse, O(NK): only the top-k logits per query survive; selective binding to positions.",
        "local_attention": "Sparse, O(NW): attention within a spatial window on the H x W grid; neighbouring patches.",
        "none": "Meta, O(0): edge declared but disabled; ablations.",
        "random_fixed": "Meta, O(NK): a random key subset frozen at init; baseline for whether learned structure matters.",
        "mixture": "Meta, O(NK): learned routing over expert attention heads; multi-modal hubs.",
    }
)

# The plugin host (a later layer) installs a provider here so that declared names and
# installed names are both accepted without this layer importing the plugin host.
_installed_types_provider: Callable[[], Iterable[str]] | None = None


def set_installed_types_provider(provider: Callable[[], Iterable[str]] | None) -> None:
    """Register the function that lists installed (executable) attention type names."""
    global _installed_types_provider
    _installed_types_provider = provider


def _installed_names() -> set[str]:
    return set(_installed_types_provider()) if _installed_types_provider is not None else set()


def check_attention_type(name: object, where: str) -> str:
    """Return ``name`` if it is a declared or installed attention type, else raise.

    Args:
        name: the type name to check.
        where: what declared it, for the message (e.g. ``"connection 'a'->'b'"``).

    Raises:
        UnknownAttentionTypeError: naming ``where`` and listing the known types.
    """
    if isinstance(name, str) and name in ATTENTION_TYPES:
        return name
    installed = _installed_names()
    if isinstance(name, str) and name in installed:
        return name
    known = ", ".join(sorted(set(ATTENTION_TYPES) | installed))
    msg = f"{where}: unknown attention type {name!r}; known types: {known}"
    raise UnknownAttentionTypeError(msg)
