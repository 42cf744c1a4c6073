"""Semantic conditioning: readable types, embeddings, ``SemanticConditioner``, transfer."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import pytest
import torch

from canvas_engineering import CanvasLayout, RegionSpec, RegionValidationError, transfer_distance
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.typed.fields import Field, compile_schema
from canvas_engineering.typed.semantic import (
    SemanticConditioner,
    auto_semantic_type,
    compute_semantic_embeddings,
    hashing_embed,
)


@dataclass
class Arm:
    joints: Field = Field(1, 4)
    command: Field = Field(1, 4)


@dataclass
class RobotA:
    camera: Field = Field(3, 3, semantic_type="RGB video from the front camera")
    arm: Arm = field(default_factory=Arm)


@dataclass
class RobotB:  # a different schema: other order, other sizes, one extra region
    arm: Arm = field(default_factory=Arm)
    lidar: Field = Field(2, 6)
    camera: Field = Field(4, 4, semantic_type="RGB video from the front camera")


class CountingEmbed:
    """``hashing_embed`` that records every call."""

    def __init__(self, dim: int = 32) -> None:
        self.dim = dim
        self.calls: list[str] = []

    def __call__(self, text: str) -> tuple[float, ...]:
        self.calls.append(text)
        return hashing_embed(text, self.dim)


def test_auto_semantic_type_reads_the_path() -> None:
    assert auto_semantic_type("arm.joints") == "arm joints"
    assert auto_semantic_type("robots[1].front_camera") == "robots 1 front camera"
    assert auto_semantic_type("country_US.gdp") == "country US gdp"
    bound = compile_schema(RobotA(), d_model=8)
    assert bound["arm.joints"].spec.semantic_type == "arm joints"
    assert bound["camera"].spec.semantic_type == "RGB video from the front camera"  # declared wins
    assert bound["camera"].spec.semantic_embedding is None  # no embed_fn, no embedding


def test_hashing_embed_is_deterministic_and_normalised() -> None:
    v = hashing_embed("arm joints", dim=16)
    assert len(v) == 16 and v == hashing_embed("arm joints", dim=16)
    assert math.isclose(math.fsum(x * x for x in v), 1.0)
    assert transfer_distance(v, hashing_embed("arm  JOINTS", dim=16)) == pytest.approx(0.0, abs=1e-9)
    near = transfer_distance(hashing_embed("front camera video"), hashing_embed("front camera image"))
    far = transfer_distance(hashing_embed("front camera video"), hashing_embed("gripper torque"))
    assert near < far
    with pytest.raises(CanvasValidationError, match="dim=0"):
        hashing_embed("x", dim=0)


def test_compute_semantic_embeddings_calls_embed_fn_once_per_path() -> None:
    embed = CountingEmbed(dim=24)
    paths = ["camera", "arm.joints", "arm.command"]
    out = compute_semantic_embeddings(paths, embed, semantic_types={"camera": "RGB video"})
    assert list(out) == paths
    assert all(len(v) == 24 and isinstance(v, tuple) for v in out.values())
    assert embed.calls == ["RGB video", "arm joints", "arm command"]
    assert out["arm.joints"] == hashing_embed("arm joints", 24)


def test_compute_semantic_embeddings_names_the_path_of_a_bad_vector() -> None:
    def ragged(text: str) -> list[float]:
        return [1.0] * (3 if text == "arm joints" else 4)

    with pytest.raises(RegionValidationError, match="'arm.joints'.*3 numbers"):
        compute_semantic_embeddings(["camera", "arm.joints"], ragged)
    with pytest.raises(RegionValidationError, match="'camera'.*nan"):
        compute_semantic_embeddings(["camera"], lambda text: torch.tensor([1.0, float("nan")]))


def test_compile_schema_fills_embeddings_with_embed_fn() -> None:
    embed = CountingEmbed(dim=32)
    bound = compile_schema(RobotA(), d_model=8, embed_fn=embed, embedding_model="toy-hash-32")
    assert len(embed.calls) == len(bound.field_paths) == 3
    spec = bound["arm.joints"].spec
    assert spec.semantic_embedding == pytest.approx(hashing_embed("arm joints", 32))
    assert spec.embedding_model == "toy-hash-32"


def test_conditioner_zero_residual_frozen_embeddings_and_gradients() -> None:
    bound = compile_schema(RobotA(), T=2, d_model=8, embed_fn=functools.partial(hashing_embed, dim=16))
    cond = SemanticConditioner(bound.layout)
    assert cond.embeddings.shape == (3, 16) and not cond.embeddings.requires_grad
    assert "embeddings" in dict(cond.named_buffers()) and "embeddings" not in dict(cond.named_parameters())
    assert torch.equal(cond.residual, torch.zeros(3, 8))
    assert cond.projection.weight.shape == (8, 16) and cond.projection.bias is None

    canvas = bound.create_batch(2)
    out = cond(canvas)
    for path in bound:
        view = bound[path]
        expected = cond.projection(torch.tensor(view.spec.semantic_embedding))
        tokens = view.extract(out)  # (2, n, 8): every position of the region gets its vector
        assert torch.allclose(tokens, expected.expand_as(tokens))
    unassigned = bound.layout.position_region_ids == len(bound.layout.regions)
    assert not out[:, unassigned].any()

    out.pow(2).sum().backward()
    assert cond.projection.weight.grad is not None and cond.projection.weight.grad.abs().sum() > 0
    assert cond.residual.grad is not None and cond.residual.grad.abs().sum() > 0
    assert cond.embeddings.grad is None


def test_regions_without_embedding_get_no_conditioning() -> None:
    layout = CanvasLayout(
        T=1,
        H=2,
        W=2,
        d_model=4,
        regions={
            "a": RegionSpec((0, 1, 0, 1, 0, 2), semantic_embedding=(1.0, 0.0, 0.0)),
            "b": RegionSpec((0, 1, 1, 2, 0, 2)),
        },
    )
    cond = SemanticConditioner(layout)
    with torch.no_grad():
        cond.residual.fill_(1.0)
    assert cond.has_embedding.tolist() == [True, False]
    assert not cond.conditioning("b").any() and cond.conditioning("a").abs().sum() > 0
    out = cond(torch.zeros(1, 4, 4))
    assert not out[0, 2:].any()
    with pytest.raises(CanvasValidationError, match="no region of the layout has a semantic_embedding"):
        SemanticConditioner(compile_schema(RobotA(), d_model=4))
    with pytest.raises(CanvasValidationError, match="canvas must have shape"):
        cond(torch.zeros(1, 5, 4))


def test_aligned_schemas_share_conditioning_through_the_projection() -> None:
    embed = functools.partial(hashing_embed, dim=32)
    a = compile_schema(RobotA(), T=2, d_model=8, embed_fn=embed)
    b = compile_schema(RobotB(), T=3, d_model=8, embed_fn=embed)
    cond_a = SemanticConditioner(a)
    cond_b = SemanticConditioner(b, projection=cond_a.projection)  # shared weights
    for path in ("camera", "arm.joints", "arm.command"):
        assert torch.equal(cond_a.conditioning(path), cond_b.conditioning(path))
    assert not torch.allclose(cond_b.conditioning("lidar"), cond_a.conditioning("camera"))

    separate = SemanticConditioner(b)  # same effect by copying the projection weights
    separate.projection.load_state_dict(cond_a.projection.state_dict())
    assert torch.equal(separate.conditioning("arm.joints"), cond_a.conditioning("arm.joints"))
    with pytest.raises(CanvasValidationError, match=r"nn.Linear\(32, 16\)"):
        SemanticConditioner(b, d_model=16, projection=cond_a.projection)


def test_compatible_regions_and_transfer_distance_use_the_embeddings() -> None:
    embed = functools.partial(hashing_embed, dim=64)
    a = compile_schema(RobotA(), d_model=8, embed_fn=embed).schema
    b = compile_schema(RobotB(), d_model=8, embed_fn=embed).schema
    exact = a.compatible_regions(b, threshold=1e-9)
    assert {(x, y) for x, y, _ in exact} == {
        ("camera", "camera"),
        ("arm.joints", "arm.joints"),
        ("arm.command", "arm.command"),
    }
    assert all(d == pytest.approx(0.0, abs=1e-9) for _, _, d in exact)
    loose = {(x, y) for x, y, _ in a.compatible_regions(b, threshold=2.0)}
    assert ("camera", "lidar") in loose  # every pair within the widest threshold

    va, vb = embed("arm joints"), embed("lidar")
    dot = sum(x * y for x, y in zip(va, vb, strict=True))
    cosine = dot / math.sqrt(sum(x * x for x in va) * sum(y * y for y in vb))
    got = transfer_distance(a.layout.regions["arm.joints"], b.layout.regions["lidar"])
    assert got == pytest.approx(1.0 - cosine, abs=1e-9)
