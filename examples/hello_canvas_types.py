"""Hello Canvas Types: declare a typed canvas, compile it, train a CanvasModule, look at it.

A dataclass whose attributes are ``Field`` s is the canvas declaration: a camera (4 x 4 video
patches per frame), the push an agent applies, the reward it earns and a latent ``thought``
scratchpad that no data feeds. ``compile_schema`` packs the fields onto a grid and wires
them (``"causal"``: same-frame and previous-frame attention); ``CanvasModule`` trains a
looped canvas DiT on it with the quick-start bouncing-ball data (its ``video`` / ``action`` /
``reward`` tensors renamed to the field paths), predicting the second half of each clip.
The user code is the ~30 lines of :func:`hello`; the rest is command-line plumbing.

    python examples/hello_canvas_types.py [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Example

NAME = "hello_canvas_types"


def hello(out: Path, steps: int, n_train: int, depth: int) -> dict[str, Any]:
    """Declare, compile, train, draw: the example's user code."""
    import lightning.pytorch as pl
    from canvas_engineering.callbacks import LoopCurriculum, prediction_figure
    from canvas_engineering.datamodules import BouncingBallsDataModule, TensorDictDataset
    from torch.utils.data import DataLoader

    from canvas_engineering import CanvasModule, Field, compile_schema, compile_topology
    from canvas_engineering.viz import layout_figure, mask_figure, save_figure

    @dataclass
    class BallWorld:
        camera: Field = Field(4, 4, family="observation")  # 4x4 patches of a 16x16 frame
        push: Field = Field(1, 1, loss_weight=2.0, family="action")  # a 2-d push per frame
        reward: Field = Field(1, 1, family="state")  # closeness of the balls to the centre
        thought: Field = Field(2, 2, is_output=False, family="memory")  # latent, no data

    bound = compile_schema(BallWorld, T=8, d_model=64, connectivity="causal", t_current=4)
    print(bound.summary())

    data = BouncingBallsDataModule(n_train=n_train, n_val=32)  # video/action/reward tensors
    rename = {"video": "camera", "action": "push", "reward": "reward"}
    formats = {rename[k]: fmt for k, fmt in data.region_formats.items()}

    def loader(split: str) -> DataLoader:
        tensors = {rename[k]: v for k, v in data.dataset(split).tensors.items()}
        return DataLoader(TensorDictDataset(tensors), batch_size=16, shuffle=split == "train")

    model = CanvasModule(bound.schema, formats, backbone_config={"depth": depth, "n_heads": 4}, max_loops=2, lr=1e-3)
    trainer = pl.Trainer(max_steps=steps, callbacks=[LoopCurriculum()], accelerator="cpu", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader("train"))
    val = trainer.validate(model, loader("val"), verbose=False)[0]

    batch = next(iter(loader("val")))
    predicted = model.sample({k: v[:2] for k, v in batch.items()}, num_inference_steps=10)
    predicted["camera"][:, :4] = batch["camera"][:2, :4]  # frames 0-3 are the given context
    figures = {
        "layout": save_figure(layout_figure(bound.layout), out / "layout.png"),
        "attention_mask": save_figure(
            mask_figure(compile_topology(bound.layout, bound.topology)), out / "attention_mask.png"
        ),
        "camera": save_figure(prediction_figure("camera", model.formats["camera"], batch["camera"][:2],
                                                predicted["camera"], bound.layout), out / "predictions_camera.png"),
    }
    return {"val": {k: float(v) for k, v in val.items()}, "figures": {k: str(p) for k, p in figures.items()},
            "positions": bound.layout.num_positions, "fields": list(bound.field_paths)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run :func:`hello` at full or ``--quick`` size; print and return the validation losses."""
    ex = Example(NAME, __doc__)
    ex.parser.add_argument("--steps", type=int, default=None, help="training steps")
    args = ex.parse(argv)
    steps = args.steps or (12 if args.quick else 1000)
    result = hello(args.out, steps, n_train=32 if args.quick else 512, depth=1 if args.quick else 2)
    ex.figures.update(result["figures"])
    val = result["val"]
    depth = 1 if args.quick else 2
    lines = [
        f"fields {', '.join(result['fields'])} on a {result['positions']}-position canvas; canvas DiT of {depth} "
        f"block(s) looped 1 -> 2 times (LoopCurriculum), {steps} training steps",
        f"validation loss {val['val/loss']:.4f}  (per field: "
        + ", ".join(f"{k.split('/')[1]} {v:.4f}" for k, v in val.items() if k.count("/") == 2)
        + ")",
    ]
    ex.report("Hello Canvas Types", lines)
    return {**result, "val_loss": val["val/loss"], "steps": steps, "seconds": ex.elapsed()}


if __name__ == "__main__":
    main()
