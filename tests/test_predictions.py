"""CanvasPredictionWriter: predict_step's outputs as safetensors files with a JSON index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")
import lightning as L  # noqa: E402
from canvas_engineering.callbacks import CanvasPredictionWriter, flatten_prediction  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from canvas_engineering import CanvasModule  # noqa: E402
from canvas_engineering.errors import CanvasValidationError  # noqa: E402
from tests.canvas_fixtures import FORMATS, tiny_loader, tiny_schema  # noqa: E402


def _model() -> CanvasModule:
    torch.manual_seed(0)
    return CanvasModule(tiny_schema(), FORMATS, backbone_config={"depth": 1, "n_heads": 2}, num_inference_steps=1)


def _trainer(writer: CanvasPredictionWriter, tmp_path: Path) -> L.Trainer:
    return L.Trainer(callbacks=[writer], logger=False, enable_progress_bar=False, enable_model_summary=False,
                     default_root_dir=tmp_path, accelerator="cpu")


def test_one_file_per_batch_holds_what_predict_step_returned(tmp_path: Path) -> None:
    writer = CanvasPredictionWriter(tmp_path / "out")
    model, loader = _model(), tiny_loader(n=6, batch_size=4)
    returned = _trainer(writer, tmp_path).predict(model, loader)
    assert [p.name for p in writer.written] == ["predictions-dl0-batch00000.safetensors",
                                                "predictions-dl0-batch00001.safetensors"]
    index = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert index["format"] == "safetensors" and index["write_interval"] == "batch"
    assert [f["indices"] for f in index["files"]] == [[0, 1, 2, 3], [4, 5]]
    for path, entry, batch in zip(writer.written, index["files"], returned, strict=True):
        tensors = load_file(path)
        assert set(tensors) == set(batch) == set(entry["keys"])
        for key, value in tensors.items():
            assert torch.equal(value, batch[key])
            assert entry["keys"][key] == {"shape": list(value.shape), "dtype": "float32"}
    # the predicted frames are the model's; the context frames are the data (t_current = 3)
    first = load_file(writer.written[0])
    data = next(iter(loader))
    assert torch.equal(first["action"][:, :3], data["action"][:, :3])
    assert first["video"].shape == data["video"].shape and torch.isfinite(first["video"]).all()


def test_one_file_per_run_concatenates_the_batches(tmp_path: Path) -> None:
    writer = CanvasPredictionWriter(tmp_path / "out", write_interval="epoch")
    returned = _trainer(writer, tmp_path).predict(_model(), tiny_loader(n=6, batch_size=4))
    assert [p.name for p in writer.written] == ["predictions-dl0.safetensors"]
    tensors = load_file(writer.written[0])
    for key in ("video", "action", "reward"):
        assert torch.equal(tensors[key], torch.cat([b[key] for b in returned]))
    index = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert index["files"][0]["batches"] == 2 and index["files"][0]["indices"] == list(range(6))


def test_output_dir_defaults_to_the_run_folder(tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    writer = CanvasPredictionWriter()
    trainer = L.Trainer(callbacks=[writer], logger=TensorBoardLogger(tmp_path, name="run"), enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.predict(_model(), tiny_loader(n=2, batch_size=2))
    assert writer.output_dir == tmp_path / "run" / "version_0" / "predictions"
    assert (writer.output_dir / "predictions-dl0-batch00000.safetensors").is_file()


def test_nested_outputs_are_flattened_and_other_values_refused() -> None:
    flat = flatten_prediction({"video": torch.ones(2, 3), "memory_out": {"state": torch.zeros(2)}})
    assert set(flat) == {"video", "memory_out/state"}
    assert flatten_prediction(torch.ones(1)).keys() == {"prediction"}
    with pytest.raises(CanvasValidationError, match="returned str at 'note'"):
        flatten_prediction({"note": "text"})
    with pytest.raises(CanvasValidationError, match="write_interval='step'"):
        CanvasPredictionWriter(write_interval="step")
