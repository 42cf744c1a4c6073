"""Tiny canvases, batches and loaders shared by the training tests."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from canvas_engineering import CanvasLayout, CanvasSchema, CanvasTopology

# Training tests fit without validation data on purpose (it keeps them fast). CanvasModule defines
# validation_step, so Lightning advises adding a val_dataloader: advice for real runs, not for these tests.
NO_VAL_DATA = pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`")

FORMATS = {
    "video": {"kind": "patches", "channels": 1, "patch_size": 4},
    "action": {"kind": "action", "dim": 2},
    "reward": {"kind": "vector", "dim": 1},
}


def tiny_schema(action_width: int = 1) -> CanvasSchema:
    """6 frames: 4x4 video patches, one action and one reward position per frame."""
    layout = CanvasLayout(
        T=6, H=5, W=4, d_model=32,
        regions={"video": (0, 6, 0, 4, 0, 4), "action": (0, 6, 4, 5, 0, action_width), "reward": (0, 6, 4, 5, 2, 3)},
        t_current=3,
    )
    return CanvasSchema(layout, CanvasTopology.causal_temporal(list(layout.regions)))


def tiny_batch(b: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "video": torch.rand(b, 6, 1, 16, 16, generator=g),
        "action": torch.randn(b, 6, 2, generator=g),
        "reward": torch.randn(b, 6, 1, generator=g),
    }


class TinyDataset(Dataset):
    """``n`` samples of :func:`tiny_batch`."""

    def __init__(self, n: int = 16, seed: int = 0) -> None:
        self.data = tiny_batch(n, seed)

    def __len__(self) -> int:
        return len(self.data["video"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.data.items()}


def tiny_loader(n: int = 16, batch_size: int = 4, seed: int = 0) -> DataLoader:
    return DataLoader(TinyDataset(n, seed), batch_size=batch_size)
