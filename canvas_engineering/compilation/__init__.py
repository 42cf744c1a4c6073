"""Compilation layer: a topology compiled to an ``AttentionPlan`` and its masks."""

