"""Saving and reloading a grafted CogVideoX: the reloaded model equals the saved one."""

from __future__ import annotations

import copy
import json

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import CogVideoXTransformer3DModel  # noqa: E402
from test_cogvideox_graft import CAUSAL, TINY, run, tiny_inputs, tiny_model  # noqa: E402

from canvas_engineering import (  # noqa: E402
    CheckpointFileError,
    GraftedSaveError,
    LoopCheckpointError,
    graft_looped_blocks,
    load_grafted_transformer,
    save_grafted_transformer,
)


def trained_graft(freeze: str = "half", seed: int = 0):
    model = tiny_model(seed)
    looped, head = graft_looped_blocks(model, max_loops=3, freeze=freeze, action_dim=3, canvas=CAUSAL)
    torch.manual_seed(7)
    with torch.no_grad():  # as if trained: loop embeddings, every trainable weight and the head move
        for p in [*model.parameters(), *head.parameters()]:
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    for block in looped:
        block.set_loops(2)
        block.set_betas([1.0, 1.7, 0.5])
    return model, head


def outputs(model, head):
    latents, text, t = tiny_inputs()
    sample = run(model, latents, text, t)
    with torch.no_grad():
        return sample, head(sample.flatten(3).permute(0, 1, 3, 2).reshape(2, -1, TINY["out_channels"]))


def test_diffusers_save_pretrained_on_a_grafted_model_says_what_to_use(tmp_path) -> None:
    model, _ = trained_graft()
    with pytest.raises(GraftedSaveError, match="save_grafted_transformer"):
        model.save_pretrained(tmp_path / "x")
    assert not (tmp_path / "x").exists()
    copy.deepcopy(model)  # the stand-in does not break copying


def test_round_trip_with_base_weights_written_is_exact(tmp_path) -> None:
    model, head = trained_graft("half")
    save_grafted_transformer(model, tmp_path / "g", action_head=head)
    assert (tmp_path / "g" / "transformer" / "config.json").is_file()
    # the base folder is plain diffusers: it loads without canvas-engineering's help
    CogVideoXTransformer3DModel.from_pretrained(tmp_path / "g" / "transformer")
    loaded = load_grafted_transformer(tmp_path / "g")
    assert loaded.model.freeze_strategy == "half"
    assert [b.current_loops for b in loaded.looped_blocks] == [2, 2]
    assert loaded.looped_blocks[0].betas == [1.0, 1.7, 0.5]
    (a, a_head), (b, b_head) = outputs(model.eval(), head), outputs(loaded.model, loaded.action_head)
    assert torch.equal(a, b) and torch.equal(a_head, b_head)
    assert loaded.model.attn_processors["transformer_blocks.0.block.attn1.processor"].plan.num_positions == 48


def test_round_trip_naming_the_base_stores_no_base_weights(tmp_path) -> None:
    base = tiny_model(0)
    base.save_pretrained(tmp_path / "base")  # stands in for a Hub id such as THUDM/CogVideoX-2b
    model, head = trained_graft("full")
    save_grafted_transformer(model, tmp_path / "g", action_head=head, base=tmp_path / "base")
    assert not (tmp_path / "g" / "transformer").exists()
    size = (tmp_path / "g" / "loops.pt").stat().st_size
    assert size < 0.4 * sum(p.numel() * 4 for p in model.parameters())
    loaded = load_grafted_transformer(tmp_path / "g")
    assert torch.equal(outputs(model.eval(), head)[0], outputs(loaded.model, loaded.action_head)[0])
    # a different base under the same name is refused, not used
    tiny_model(1).save_pretrained(tmp_path / "base")
    with pytest.raises(CheckpointFileError, match="differs from the one the grafted model was saved with"):
        load_grafted_transformer(tmp_path / "g")


def test_saving_over_a_folder_replaces_it_and_damage_is_refused(tmp_path) -> None:
    model, head = trained_graft()
    save_grafted_transformer(model, tmp_path / "g", action_head=head)
    save_grafted_transformer(model, tmp_path / "g", action_head=head)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]
    loops = tmp_path / "g" / "loops.pt"
    data = bytearray(loops.read_bytes())
    data[len(data) // 2] ^= 0xFF
    loops.write_bytes(bytes(data))
    with pytest.raises(LoopCheckpointError):
        load_grafted_transformer(tmp_path / "g")
    config = tmp_path / "g" / "canvas_graft.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "lopps": 1}))
    with pytest.raises(CheckpointFileError, match="unknown key"):
        load_grafted_transformer(tmp_path / "g")
    config.unlink()
    with pytest.raises(CheckpointFileError, match="canvas_graft.json: missing"):
        load_grafted_transformer(tmp_path / "g")


def test_ungrafted_models_and_bad_heads_are_refused(tmp_path) -> None:
    from canvas_engineering import CanvasValidationError

    with pytest.raises(CanvasValidationError, match="is not grafted"):
        save_grafted_transformer(tiny_model(), tmp_path / "g", action_head=None)
    model, _ = trained_graft()
    with pytest.raises(CanvasValidationError, match="action_head"):
        save_grafted_transformer(model, tmp_path / "g", action_head=torch.nn.Linear(2, 2))
