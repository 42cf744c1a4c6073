"""Execution layer: ``CanvasAttention``, the ``AttentionType`` base class and the kernels."""

