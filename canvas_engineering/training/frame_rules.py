"""The per-frame pass over decoded predictions: residual carriers and clock holds.

For a region whose carrier adds the previous frame or whose clock may not fire, the
decoded frames are walked in time order (a loop over a region's frames, vectorised over the
batch and the frame's entries):

* a predicted frame ``k`` is ``carrier.compose(decoded[k], state)`` (``state``: the value at
  frame ``k - 1``), then held at ``state`` for the samples whose clock does not fire;
* a context frame is ``carrier.compose(decoded[k], data[k - 1])`` and sets ``state`` to the
  data at ``k`` (the first state is the batch's first frame).

Other regions pass through unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from canvas_engineering.training.region_behaviour import RegionBehaviour

__all__ = ["apply_frame_rules"]


def apply_frame_rules(
    decoded: Mapping[str, torch.Tensor],
    batch: Mapping[str, torch.Tensor],
    regions: Mapping[str, RegionBehaviour],
    predicted_frames: Callable[[str], torch.Tensor],
    updates: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Return the predictions after residual carriers and clock holds.

    Args:
        decoded: region -> ``(B, t, ...)`` decoder output.
        batch: region -> ``(B, t, ...)`` data (the context).
        regions: region -> behaviour, for every region of ``decoded``.
        predicted_frames: region -> ``(t,)`` bool predicted frames.
        updates: region -> ``(B, t)`` bool frames where its clock fires (regions whose clock holds).

    """
    out = dict(decoded)
    for name, dec in decoded.items():
        region = regions[name]
        if not region.runs_per_frame:
            continue
        carrier = region.carrier
        fires = updates.get(name)
        data = batch[name].to(dec.device, dec.dtype)
        shape = (dec.shape[0],) + (1,) * (dec.dim() - 2)  # broadcast a (B,) mask over one frame
        frames, state = [], data[:, 0]
        for k, is_predicted in enumerate(predicted_frames(name).tolist()):  # a loop over frames
            if is_predicted:
                value = carrier.compose(dec[:, k], state if k > 0 else None)
                if fires is not None:
                    value = torch.where(fires[:, k].view(shape), value, state)
                state = value
            else:
                value = carrier.compose(dec[:, k], data[:, k - 1] if k > 0 else None)
                state = data[:, k]
            frames.append(value)
        out[name] = torch.stack(frames, dim=1)
    return out
