"""Integrations with pretrained models (CogVideoX)."""

