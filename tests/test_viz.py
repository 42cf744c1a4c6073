"""Readable pictures: frame ticks and region strips on masks, wrapped layout frames."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from canvas_engineering import CanvasLayout  # noqa: E402
from canvas_engineering.compilation.compiler import compile_topology  # noqa: E402
from canvas_engineering.typed.presets import robot_manipulation_schema  # noqa: E402
from canvas_engineering.viz import LAYOUT_COLUMNS, layout_figure, mask_figure, save_figure  # noqa: E402


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_mask_picture_has_frame_ticks_and_a_region_legend() -> None:
    schema = robot_manipulation_schema()  # 5 frames of 8 x 8, t_current = 2
    fig = mask_figure(compile_topology(schema.layout, schema.topology))
    ax = fig.axes[0]
    expected = ["t=0", "t=1", "t=2*", "t=3*", "t=4*"]
    assert [t.get_text() for t in ax.get_xticklabels()] == expected
    assert [t.get_text() for t in ax.get_yticklabels()] == expected
    hw = schema.layout.H * schema.layout.W
    assert list(ax.get_xticks()) == pytest.approx([(t + 0.5) * hw - 0.5 for t in range(5)])
    legend = {t.get_text() for t in fig.legends[0].get_texts()}
    assert legend == {f"{name} ({spec.size})" for name, spec in schema.layout.regions.items()}
    assert len(fig.axes) == 4  # the mask, the two region strips and the weight colour bar
    _close(fig)


def test_long_canvas_mask_labels_every_kth_frame_in_its_block_view() -> None:
    layout = CanvasLayout(T=40, H=16, W=8, d_model=8, regions={"video": (0, 40, 0, 16, 0, 8)}, t_current=20)
    fig = mask_figure(_plan(layout))
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[:3] == ["t=0", "t=3", "t=6"] and len(labels) <= 16  # 40 frames: every 3rd labelled
    assert fig.axes[0].get_images()[0].get_array().shape == (80, 80)  # 5120 positions in 64-tiles
    _close(fig)


def _plan(layout: CanvasLayout):
    from canvas_engineering import CanvasTopology

    return compile_topology(layout, CanvasTopology.causal_temporal(["video"]))


def test_layout_of_a_long_canvas_wraps_frames_into_rows(tmp_path) -> None:
    from PIL import Image

    layout = CanvasLayout(T=16, H=8, W=8, d_model=8, t_current=8,
                          regions={"visual": (0, 16, 0, 6, 0, 8), "action": (0, 16, 6, 7, 0, 1)})
    fig = layout_figure(layout, max_frames=16)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels][:2] == ["t=0", "t=1"] and panels[8].get_title() == "t=8 (future)"
    assert len(panels) == 16
    rows = {round(ax.get_position().y0, 3) for ax in panels}
    assert len(rows) == 3 and LAYOUT_COLUMNS == 6
    with Image.open(save_figure(fig, tmp_path / "layout.png")) as image:
        width, height = image.size
    assert width <= 2000 and height < width
