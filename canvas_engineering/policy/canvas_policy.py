"""``CanvasPolicy``: a trained :class:`~canvas_engineering.CanvasModule` as an agent that acts step by step.

Each :meth:`CanvasPolicy.act` call is one environment step. The policy keeps the last ``T``
steps of every feature (the canvas window), normalised with the statistics stored in the
model, and places them on the canvas with the current step at an *anchor* frame ``c``:

* ``c`` grows with the episode (step ``n`` of an episode at frame ``n - 1``) between the
  action region's first predicted frame ``a`` and ``last - chunk_size + 1`` (``last``: its last
  frame), then stays there and the window rolls. Early in an episode of a model whose
  actions start at ``a > 0``, the frames before the first step hold copies of the first
  observation (LeRobot's convention) and zero actions;
* frames after ``c`` hold zeros (the data mean): the future is unknown;
* past actions are the ones the policy returned; regions that are neither observations nor
  the action hold the values given as optional features, else zeros.

The model's :meth:`~canvas_engineering.CanvasModule.sample` denoises the action region; the
actions at frames ``c .. c + chunk_size - 1`` form a chunk of which the first ``execute_steps``
are returned on this and the following calls before the policy samples again (re-plans).
Returned actions are in data units (the model's normalisation undone). Each batch row (one
environment of a vector env) keeps its own episode: :meth:`reset` takes the rows that start anew.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from canvas_engineering.errors import PolicyError
from canvas_engineering.models.region_codecs import expected_shape
from canvas_engineering.policy.features import FeatureSpec, read_features
from canvas_engineering.policy.spaces import to_env_action
from canvas_engineering.validation import check_bool, check_int

if TYPE_CHECKING:
    from canvas_engineering.training.module import CanvasModule

__all__ = ["CanvasPolicy"]


def _positive(value: object, name: str, maximum: int | None = None) -> int:
    return check_int(value, name, minimum=1, maximum=maximum, error=PolicyError)


class CanvasPolicy:
    """Act with a trained canvas model: observations in, actions out, one environment step per call.

    Args:
        model: the trained :class:`~canvas_engineering.CanvasModule` (put in eval mode).
        action: the region holding the actions (``None``: the region named ``"action"``, else
            the only fed region of kind ``"action"``). Its frames must have period 1.
        observations: the regions every observation must give (``None``: the fed regions the
            model never predicts, i.e. its context). The other fed regions except the action
            may be given too (optional features).
        chunk_size: actions taken from each sample (frames ``c .. c + chunk_size - 1``).
        execute_steps: how many of them are executed before the next sample (``None``: all).
        num_inference_steps: denoising steps per sample (``None``: the model's).
        deterministic: draw every sample's noise from a generator seeded with ``seed``, so the
            same inputs (the whole batch and its history) give the same actions.
        seed: seed of the sampling noise (re-seeded by a full :meth:`reset`).
        action_space: a gymnasium action space; when given, :meth:`act` returns NumPy actions
            ready for ``env.step`` (:func:`~canvas_engineering.policy.spaces.to_env_action`).

    Raises:
        PolicyError: the model has no such action region, it is not predicted or not at period
            1, an observation is not a fed region, ``chunk_size`` exceeds the predicted action
            frames, or ``execute_steps`` is not in ``[1, chunk_size]``.

    Example:
        >>> policy = CanvasPolicy.from_pretrained("runs/cartpole/pretrained")  # doctest: +SKIP
        >>> policy.reset()  # doctest: +SKIP
        >>> action = policy.act({"obs": obs})  # doctest: +SKIP

    """

    def __init__(
        self,
        model: CanvasModule,
        *,
        action: str | None = None,
        observations: Sequence[str] | None = None,
        chunk_size: int = 1,
        execute_steps: int | None = None,
        num_inference_steps: int | None = None,
        deterministic: bool = False,
        seed: int = 0,
        action_space: Any = None,
    ) -> None:
        for attr in ("formats", "layout", "sample", "predicted_frames", "normalize", "denormalize"):
            if not hasattr(model, attr):
                msg = f"CanvasPolicy needs a CanvasModule, got {type(model).__name__} (no {attr!r})"
                raise PolicyError(msg)
        self.model = model.eval()
        layout, formats = model.layout, model.formats
        self.action = self._action_region(action, formats)
        self.observations = self._observation_regions(observations, formats)
        self.shapes = {n: expected_shape(f, layout, n)[1:] for n, f in formats.items()}
        #: region -> (t,) real frame of each of its canvas frames
        self._real = {n: self._real_frames(n) for n in formats}
        first, last = self._action_frames()
        self.chunk_size = _positive(chunk_size, "chunk_size", maximum=last - first + 1)
        self.execute_steps = (
            self.chunk_size
            if execute_steps is None
            else _positive(execute_steps, "execute_steps", maximum=self.chunk_size)
        )
        self.num_inference_steps = (
            None if num_inference_steps is None else _positive(num_inference_steps, "num_inference_steps")
        )
        self.deterministic = check_bool(deterministic, "deterministic", error=PolicyError)
        self.seed = check_int(seed, "seed", error=PolicyError)
        self.action_space = action_space
        self._anchor_range = (first, last - self.chunk_size + 1)
        self.features = [
            FeatureSpec(n, tuple(self.shapes[n]), n in self.observations) for n in formats if n != self.action
        ]
        #: samples drawn (model calls) since construction
        self.samples_drawn = 0
        self.reset()

    # -- construction ------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, pretrained_path: str | os.PathLike[str], **kwargs: Any) -> CanvasPolicy:
        """Load a folder written by ``CanvasModule.save_pretrained`` and wrap it (``kwargs``: the policy's)."""
        from canvas_engineering.training.module import CanvasModule

        return cls(CanvasModule.from_pretrained(pretrained_path), **kwargs)

    @classmethod
    def from_checkpoint(cls, checkpoint_path: str | os.PathLike[str], **kwargs: Any) -> CanvasPolicy:
        """Load a Lightning ``.ckpt`` of a ``CanvasModule`` (on the CPU) and wrap it (``kwargs``: the policy's)."""
        from canvas_engineering.training.module import CanvasModule

        return cls(CanvasModule.load_from_checkpoint(checkpoint_path, map_location="cpu"), **kwargs)

    def _action_region(self, action: str | None, formats: Mapping[str, Any]) -> str:
        if action is None:
            kinds = [n for n, f in formats.items() if f.kind == "action"]
            if "action" in formats:
                action = "action"
            elif len(kinds) == 1:
                action = kinds[0]
            else:
                msg = f"name the action region with action=...: fed regions {sorted(formats)}; of kind action: {kinds}"
                raise PolicyError(msg)
        if action not in formats:
            msg = f"action region {action!r} is not a fed region of the model; fed regions: {sorted(formats)}"
            raise PolicyError(msg)
        if formats[action].kind == "patches":
            msg = f"action region {action!r} is a 'patches' region; a policy acts with a vector or action region"
            raise PolicyError(msg)
        if not bool(self.model.predicted_frames(action).any()):
            msg = f"action region {action!r} has no predicted frame: the model never samples it"
            raise PolicyError(msg)
        if self.model.layout.regions[action].period != 1:
            msg = f"action region {action!r} has period {self.model.layout.regions[action].period}; a policy needs 1"
            raise PolicyError(msg)
        return action

    def _observation_regions(self, observations: Sequence[str] | None, formats: Mapping[str, Any]) -> tuple[str, ...]:
        if observations is None:
            found = [n for n in formats if n != self.action and not bool(self.model.predicted_frames(n).any())]
            if not found:
                msg = (
                    f"the model predicts every fed region ({sorted(formats)}): no context region to observe; "
                    "name the observed regions with observations=[...]"
                )
                raise PolicyError(msg)
            return tuple(found)
        if isinstance(observations, str):
            observations = [observations]
        for name in observations:
            if name not in formats or name == self.action:
                why = "the action region" if name == self.action else f"not a fed region; fed: {sorted(formats)}"
                msg = f"observation {name!r} is {why}"
                raise PolicyError(msg)
        return tuple(dict.fromkeys(observations))

    def _real_frames(self, name: str) -> torch.Tensor:
        layout = self.model.layout
        t0, t1 = layout.regions[name].bounds[:2]
        return layout.frame_real_times[list(layout.regions).index(name), t0:t1].clone()

    def _action_frames(self) -> tuple[int, int]:
        """First and last real frame of the predicted action frames (a contiguous run by construction)."""
        predicted = self._real[self.action][self.model.predicted_frames(self.action).cpu()]
        return int(predicted[0]), int(predicted[-1])

    # -- state -------------------------------------------------------------------

    def reset(self, env_ids: Iterable[int] | np.ndarray | torch.Tensor | None = None) -> None:
        """Start new episodes: all (``None``; the batch size is then read from the next observation) or given rows."""
        if env_ids is None:
            self._history: dict[str, torch.Tensor] | None = None
            self._generator = torch.Generator().manual_seed(self.seed)
            return
        if self._history is None:
            return
        ids = env_ids if hasattr(env_ids, "shape") else list(env_ids)
        rows = torch.as_tensor(np.asarray(ids), dtype=torch.long).reshape(-1)
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= self._batch):
            msg = f"reset(env_ids={rows.tolist()}): rows must be in [0, {self._batch - 1}] (the batch size)"
            raise PolicyError(msg)
        self._count[rows] = 0
        self._left[rows] = 0

    def _start(self, batch: int) -> None:
        device, dtype = self.model.device, self.model.dtype
        window = self.model.layout.T
        self._batch = batch
        self._history = {n: torch.zeros(batch, window, *s, device=device, dtype=dtype) for n, s in self.shapes.items()}
        self._count = torch.zeros(batch, dtype=torch.long, device=device)
        self._left = torch.zeros(batch, dtype=torch.long, device=device)
        self._next = torch.zeros(batch, dtype=torch.long, device=device)
        self._queue = torch.zeros(batch, self.chunk_size, *self.shapes[self.action], device=device, dtype=dtype)

    def _pushed(self, values: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return the history with one more step: ``values`` where given, else zeros (the action comes later)."""
        out = {}
        for name, hist in self._history.items():
            step = values.get(name)
            step = torch.zeros_like(hist[:, -1]) if step is None else step.to(hist)
            out[name] = torch.cat([hist[:, 1:], step[:, None]], 1)
        return out

    def _read(self, observation: object) -> tuple[dict[str, torch.Tensor], bool]:
        reserved = {self.action: "the action region the policy predicts"}
        values, batched = read_features(observation, self.features, reserved)
        b = next(iter(values.values())).shape[0]
        if self._history is None:
            self._start(b)
        elif b != self._batch:
            msg = f"observation batch size {b} differs from the episode's ({self._batch}); call reset() to start anew"
            raise PolicyError(msg)
        device, dtype = self.model.device, self.model.dtype
        stepped = {n: v.to(device, dtype)[:, None] for n, v in values.items()}  # (B, 1, *shape): one frame
        return {n: v[:, 0] for n, v in self.model.normalize(stepped).items()}, batched

    # -- acting ------------------------------------------------------------------

    def act(self, observation: Mapping[str, Any] | Any) -> Any:
        """Return the action for the current step of every episode.

        Args:
            observation: feature name -> the current value, of the feature's per-step shape or
                with a leading batch dimension (one row per environment); a bare array when the
                policy observes one feature.

        Returns:
            ``(B, *action_shape)`` tensor in data units (``(*action_shape,)`` for an unbatched
            observation); NumPy env actions when the policy has an ``action_space``.

        Raises:
            PolicyError: an unknown or missing feature, a wrong shape (the message names the
                feature and the expected shape), non-finite values, a changed batch size.

        """
        values, batched = self._read(observation)
        self._history = self._pushed(values)
        self._count += 1
        rows = torch.nonzero(self._left == 0).flatten()
        if rows.numel():
            self._plan(rows)
        everyone = torch.arange(self._batch, device=self._left.device)
        action = self._queue[everyone, self._next]
        self._next += 1
        self._left -= 1
        self._history[self.action][:, -1] = action
        action = self.model.denormalize({self.action: action[:, None]})[self.action][:, 0]
        return self._output(action, batched)

    def _output(self, action: torch.Tensor, batched: bool) -> Any:
        action = action.detach().cpu()
        if self.action_space is not None:
            env_action = to_env_action(action, self.action_space)
            return env_action if batched else env_action[0]
        return action if batched else action[0]

    def _noise(self) -> torch.Generator:
        if self.deterministic:
            return torch.Generator().manual_seed(self.seed)
        return self._generator

    def _plan(self, rows: torch.Tensor) -> None:
        low, high = self._anchor_range
        anchor = (self._count[rows] - 1).clamp(low, high)
        sampled = self._sample(self._window(self._history, self._count, rows, anchor))[self.action]
        frames = anchor[:, None] + torch.arange(self.chunk_size, device=anchor.device) - int(self._real[self.action][0])
        self._queue[rows] = sampled[torch.arange(rows.numel(), device=rows.device)[:, None], frames].to(self._queue)
        self._next[rows] = 0
        self._left[rows] = self.execute_steps

    def _sample(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        self.samples_drawn += 1
        return self.model.sample(batch, num_inference_steps=self.num_inference_steps, generator=self._noise())

    def _window(
        self, history: Mapping[str, torch.Tensor], count: torch.Tensor, rows: torch.Tensor, anchor: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Return the canvas batch of ``rows`` with each row's current step at its ``anchor`` frame (normalised units).

        One gather per region: frame ``r`` of a row reads the step ``anchor - r`` steps back,
        clamped to the episode's first step (edge padding; zeros for the action), zeros after ``anchor``.
        """
        window = next(iter(history.values())).shape[1]
        n = count[rows][:, None]
        batch = {}
        for name, hist in history.items():
            back = anchor[:, None] - self._real[name].to(anchor.device)[None, :]  # (R, t) steps back
            index = window - 1 - torch.minimum(back.clamp(min=0), n - 1)
            values = hist[rows[:, None], index]  # (R, t, *shape)
            keep = back >= 0
            if name == self.action:
                keep &= back <= n - 1
            batch[name] = values * keep.view(*keep.shape, *[1] * (values.dim() - 2)).to(values)
        return batch

    # -- imagining ---------------------------------------------------------------

    def imagine(self, observation: Mapping[str, Any] | Any, steps: int) -> dict[str, torch.Tensor]:
        """Return the model's predicted future of every predicted region, from the history and ``observation``.

        The policy's state is left as it was. Every row's current step stands at one shared
        frame ``c`` (rows with shorter histories padded with their first step), chosen so that
        ``steps`` frames fit from it.

        Args:
            observation: the current step's features (as for :meth:`act`).
            steps: how many steps to predict, the current one first (index 0: what the model
                expects now, e.g. the action to take and the reward it earns).

        Returns:
            Region -> ``(B, m, *shape)`` in data units: the region's frames at real steps
            ``c .. c + steps - 1`` (``m = steps`` for period-1 regions, fewer for slower ones);
            without the batch dimension for an unbatched observation.

        Raises:
            PolicyError: a bad observation (as for :meth:`act`), or ``steps`` outside ``[1, T - a]``
                (``a``: the action region's first predicted frame).

        """
        first = self._anchor_range[0]
        steps = _positive(steps, "steps", maximum=self.model.layout.T - first)
        values, batched = self._read(observation)
        history, count = self._pushed(values), self._count + 1
        anchor = (count.max() - 1).clamp(first, self.model.layout.T - steps)
        everyone = torch.arange(self._batch, device=count.device)
        sampled = self._sample(self._window(history, count, everyone, anchor.expand(self._batch)))
        out = {}
        for name, value in sampled.items():
            if not bool(self.model.predicted_frames(name).any()):
                continue
            real = self._real[name].to(value.device)
            out[name] = value[:, (real >= anchor) & (real < anchor + steps)]
        out = self.model.denormalize(out)
        return {n: (v.detach().cpu() if batched else v[0].detach().cpu()) for n, v in out.items()}
