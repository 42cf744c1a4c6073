"""Run a 2-process CPU fit of a tiny CanvasModule (used by test_distributed.py as a subprocess).

    python distributed_fit.py {ddp,fsdp2} OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl

sys.path.insert(0, str(Path(__file__).parent))
from canvas_fixtures import FORMATS, tiny_loader, tiny_schema

from canvas_engineering import CanvasModule


class RecordRank(pl.Callback):
    """Each rank writes what it trained on: steps, batches seen, a loss."""

    def __init__(self, out: Path) -> None:
        self.out, self.batches, self.losses = out, [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append(float(batch["reward"].sum()))
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module) -> None:
        rank = trainer.global_rank
        (self.out / f"rank{rank}.json").write_text(json.dumps(
            {"rank": rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
             "batches": self.batches, "losses": self.losses,
             "strategy": type(trainer.strategy).__name__}))


def main() -> None:
    kind, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(0)
    if kind == "ddp":
        strategy = "ddp"
    else:
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy = ModelParallelStrategy(
            data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False
        )
    model = CanvasModule(tiny_schema(), FORMATS, backbone_config={"depth": 2, "n_heads": 2}, max_loops=2, lr=1e-3)
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=3, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[RecordRank(out)])
    trainer.fit(model, tiny_loader(32, batch_size=4))
    trainer.save_checkpoint(out / "model.ckpt")
    if trainer.global_rank == 0:
        loaded = CanvasModule.load_from_checkpoint(out / "model.ckpt")
        from canvas_fixtures import tiny_batch

        pred = loaded.sample(tiny_batch(2), num_inference_steps=2)
        (out / "predict.json").write_text(json.dumps({k: list(v.shape) for k, v in pred.items()}))


if __name__ == "__main__":
    main()
