"""Run a 2-process CPU DDP fit on a LeRobot folder through EpisodeDataModule (test_episodes.py runs it).

    python episodes_ddp_fit.py ROOT OUT_DIR

Each rank writes the windows it trained on (read back from the state values, which encode
episode and frame) so the test can check that the ranks read disjoint shards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
from canvas_engineering.datamodules import EpisodeDataModule

from canvas_engineering import CanvasModule


class RecordWindows(pl.Callback):
    """Each rank writes the first state value of every window it trained on."""

    def __init__(self, out: Path) -> None:
        self.out, self.firsts = out, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.firsts += [float(v) for v in batch["observation.state"][:, 0, 0]]

    def on_train_end(self, trainer, pl_module) -> None:
        (self.out / f"rank{trainer.global_rank}.json").write_text(
            json.dumps({"world_size": trainer.world_size, "firsts": self.firsts, "step": trainer.global_step})
        )


def main() -> None:
    root, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(0)
    dm = EpisodeDataModule(root=root, history=3, horizon=2, batch_size=4, normalize=False, d_model=32)
    model = CanvasModule(dm.schema, dm.region_formats, backbone_config={"depth": 1, "n_heads": 2}, lr=1e-3)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_epochs=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, num_sanity_val_steps=0, callbacks=[RecordWindows(out)])
    trainer.fit(model, dm)


if __name__ == "__main__":
    main()
