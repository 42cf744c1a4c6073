"""``CanvasModule``: train a canvas diffusion model with ``lightning.Trainer.fit``."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torchmetrics
from torch import nn

from canvas_engineering.canvas import SpatiotemporalCanvas
from canvas_engineering.errors import BatchValidationError, CanvasValidationError, NonFiniteLossError
from canvas_engineering.future_metrics import FutureFrameMetric, baselines_from_batch, repeat_last_baseline
from canvas_engineering.noise_process import NoiseProcess, NoiseSchedulerName, TimestepSampling, make_noise_process
from canvas_engineering.program import CanvasProgram
from canvas_engineering.region_codecs import (
    RegionDecoder,
    RegionEncoder,
    RegionFormat,
    expected_shape,
    parse_region_formats,
)
from canvas_engineering.schema import CanvasSchema

__all__ = ["BatchValidationError", "CanvasModule", "NonFiniteLossError", "schema_difference"]


def module_key(region: str) -> str:
    """A ModuleDict-safe key for a region name (typed regions are dotted paths like ``arm.joints``)."""
    return region.replace(".", "__")


def _as_schema(schema: CanvasSchema | Mapping[str, Any] | str) -> CanvasSchema:
    if isinstance(schema, CanvasSchema):
        return schema
    if isinstance(getattr(schema, "schema", None), CanvasSchema):  # a BoundSchema from compile_schema
        return schema.schema
    if isinstance(schema, Mapping):
        return CanvasSchema.from_dict(dict(schema))
    if isinstance(schema, str):
        from canvas_engineering.presets import PRESETS

        if schema in PRESETS:
            return PRESETS[schema]()
        return CanvasSchema.from_json(schema)
    msg = f"CanvasModule.schema must be a CanvasSchema, a schema dict, a preset name or a JSON file path, got {type(schema).__name__}"
    raise CanvasValidationError(msg)


def _schema_and_program(
    schema: CanvasSchema | Mapping[str, Any] | str | None, program: CanvasProgram | Mapping[str, Any] | str | None
) -> tuple[CanvasSchema, CanvasProgram | None]:
    """The model's schema and program: the program's schema wins; a given schema must agree."""
    if program is None:
        if schema is None:
            msg = "CanvasModule needs a schema (or a program, whose schema it uses)"
            raise CanvasValidationError(msg)
        return _as_schema(schema), None
    program = CanvasProgram.coerce(program)
    if schema is not None:
        diff = schema_difference(_as_schema(schema).to_dict(), program.schema.to_dict())
        if diff:
            msg = f"CanvasModule: schema and program.schema differ at {diff} (schema vs program); pass only the program"
            raise CanvasValidationError(msg)
    return program.schema, program


def _check_program_formats(program: CanvasProgram, formats: Mapping[str, RegionFormat]) -> None:
    """Every on_event clock watches a region the batch feeds; ``memory_out`` is not a region name."""
    for name in formats:
        clock = program.regions[name].clock
        source = clock.source or name
        if clock.kind == "on_event" and source not in formats:
            msg = (
                f"region {name!r}: its on_event clock watches region {source!r}, which the batch does not feed "
                f"(no region format, or constant); fed regions: {', '.join(formats)}"
            )
            raise CanvasValidationError(msg)
    if "memory_out" in program.schema.layout.regions and program.regions_with(carrier="memory"):
        msg = "a region named 'memory_out' clashes with predict_step's memory_out entry; rename it"
        raise CanvasValidationError(msg)


def schema_difference(a: Mapping[str, Any], b: Mapping[str, Any], path: str = "") -> str | None:
    """The first difference between two schema dicts, as ``"key: a vs b"`` (``None`` if equal)."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for key in list(a) + [k for k in b if k not in a]:
            where = f"{path}.{key}" if path else str(key)
            if key not in a or key not in b:
                return f"{where}: {'absent' if key not in a else a[key]!r} vs {'absent' if key not in b else b[key]!r}"
            diff = schema_difference(a[key], b[key], where)
            if diff:
                return diff
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            diff = schema_difference(x, y, f"{path}[{i}]")
            if diff:
                return diff
        return None
    return None if a == b else f"{path}: {a!r} vs {b!r}"


class WarmupCosine:
    """Learning-rate factor: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def __init__(self, warmup: int, total: int | None) -> None:
        self.warmup, self.total = int(warmup), total

    def __call__(self, step: int) -> float:
        """The factor at optimiser step ``step`` (0-based)."""
        factor = min(1.0, (step + 1) / self.warmup) if self.warmup else 1.0
        if self.total is None:
            return factor
        progress = min(1.0, max(0.0, (step - self.warmup) / max(1, self.total - self.warmup)))
        return factor * 0.5 * (1.0 + math.cos(math.pi * progress))


class CanvasModule(pl.LightningModule):
    """A canvas diffusion model: per-region encoders/decoders around a (looped) backbone.

    Training step: each region's tensor is encoded and placed on the canvas; positions of
    output regions at frames ``>= t_current`` are noised by a diffusers scheduler (inputs
    and past frames stay clean context); the backbone predicts the clean canvas, each
    region's decoder reads it back, and the loss is the per-position error in data space,
    weighted by ``layout.loss_weight_mask`` over the noised positions, logged overall and
    per region.

    With a :class:`~canvas_engineering.CanvasProgram` (``program=``) every program property
    takes effect ("predicted" positions are those the carrier predicts, see below):

    * **carrier**: ``diffusive``: output regions' future frames are noised (as without a
      program). ``filter``: future frames are noised and predicted even for an input region;
      past frames are always given. ``deterministic``/``memory``: predicted positions hold
      zeros instead of noise (regression from the clean context; at sampling they stay
      zero and the last step's prediction is returned). ``residual``: noised like
      ``diffusive``; the prediction at frame ``k`` is the decoder output plus the value at
      frame ``k - 1`` (the data at a context frame, the region's own prediction at a
      predicted frame; nothing at frame 0). ``memory``: :meth:`predict_step` also returns
      ``{"memory_out": {region: last frame}}`` for the caller to feed the next window.
    * **clock**: at predicted frames where the region's clock does not fire
      (:meth:`CanvasProgram.update_mask`), its prediction is *held* from its previous frame
      (the data at a context frame; the batch's own first frame if frame 0 does not fire)
      and the position takes no loss. Noising is unchanged.
    * **compile_mode**: ``freeze``: the region's encoder and decoder get
      ``requires_grad=False`` (AdamW never sees them) and its encoded tokens are detached;
      the backbone still learns to predict it. ``constant``: no codec; its tokens are the
      fixed ``constant_value`` buffer; never noised, decoded or lossed; connections whose
      query region it is are dropped (:meth:`CanvasProgram.execution_topology`), so its
      positions never run as attention queries; a batch may omit it. ``export``:
      :meth:`predict_step` returns it even if it is an input.
    * **family**: the default carrier, and the loss weight ``family scale x layout weight``
      unless ``RegionProgram.loss_weight`` is given (:meth:`CanvasProgram.loss_weight`).
    * **operator / write_mode**: the backbone runs :meth:`CanvasProgram.execution_topology`
      (operators as ``fn``); write modes other than ``add`` are passed to the backbone as
      ``write_modes`` (``canvas_dit`` accepts them; see :class:`CanvasAttention`).

    Args:
        schema: a ``CanvasSchema``, its dict (``to_dict``), a preset name or a schema JSON path
            (may be omitted when ``program`` is given; if both are given they must agree).
        region_formats: region name -> :class:`RegionFormat` (or its dict) for every region
            a batch feeds.
        backbone: registered backbone name (``canvas-engineering plugins``).
        backbone_config: keyword arguments for the backbone factory.
        max_loops: loops of each looped block (driven by ``LoopCurriculum``).
        freeze: freeze strategy for pretrained backbones (``"none"`` for from-scratch ones).
        noise_scheduler: ``"ddpm"``, ``"ddim"`` (diffusers, integer timesteps) or ``"flow"``
            (rectified flow sampled with diffusers' ``FlowMatchEulerDiscreteScheduler``); the
            network always predicts the clean canvas (:mod:`canvas_engineering.noise_process`).
        num_train_timesteps: diffusion steps of the scheduler.
        num_inference_steps: denoising steps of :meth:`sample`.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up steps.
        lr_decay: ``"none"`` (constant after warm-up) or ``"cosine"`` (to 0 at the trainer's
            last step, ``Trainer.estimated_stepping_batches``).
        program: a :class:`CanvasProgram`, its dict, JSON text or a JSON file path; its schema
            is the model's. Saved in the hyper-parameters (as a dict) so checkpoints reload it.
        timestep_sampling: how training noise levels are drawn: ``"uniform"`` or
            ``"logit_normal"`` (sigmoid of ``N(logit_mean, logit_std)``; a positive mean trains
            more at high noise, where the model must predict the future rather than denoise it).
        logit_mean: mean of the logit-normal draw.
        logit_std: its standard deviation (> 0).
        sample_metrics: score the sampled future at validation and test
            (:meth:`update_future_metrics`): per region and predicted frame, MSE (and SSIM for
            images) of :meth:`sample`'s output and of the baselines, logged as
            ``val/sample/{region}/...`` and ``val/baseline/{name}/{region}/...``.
        sample_metric_batches: how many batches of each validation/test epoch are sampled.
        sample_metric_steps: denoising steps for those samples (``None``: ``num_inference_steps``).
    """

    def __init__(
        self,
        schema: CanvasSchema | dict[str, Any] | str | None = None,
        region_formats: dict[str, dict[str, Any]] | None = None,
        backbone: str = "canvas_dit",
        backbone_config: dict[str, Any] | None = None,
        max_loops: int = 1,
        freeze: Literal["full", "half", "none"] = "none",
        noise_scheduler: NoiseSchedulerName = "ddpm",
        num_train_timesteps: int = 1000,
        num_inference_steps: int = 20,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 0,
        lr_decay: Literal["none", "cosine"] = "none",
        program: CanvasProgram | dict[str, Any] | str | None = None,
        timestep_sampling: TimestepSampling = "uniform",
        logit_mean: float = 0.0,
        logit_std: float = 1.0,
        sample_metrics: bool = True,
        sample_metric_batches: int = 4,
        sample_metric_steps: int | None = None,
    ) -> None:
        super().__init__()
        from canvas_engineering.plugin_host import get_registry

        schema, program = _schema_and_program(schema, program)
        self.schema = schema
        self.layout = schema.layout
        #: the process program (``None``: plain schema semantics)
        self.program: CanvasProgram | None = program
        all_formats = parse_region_formats(region_formats or {}, self.layout)
        constant = set(program.regions_with(compile_mode="constant")) if program is not None else set()
        formats = {n: f for n, f in all_formats.items() if n not in constant}
        if not formats:
            msg = "CanvasModule.region_formats is empty: say which tensor feeds which region"
            raise CanvasValidationError(msg)
        for name, value, ok in (
            ("max_loops", max_loops, isinstance(max_loops, int) and max_loops >= 1),
            ("num_train_timesteps", num_train_timesteps, isinstance(num_train_timesteps, int) and num_train_timesteps >= 2),
            ("num_inference_steps", num_inference_steps, isinstance(num_inference_steps, int) and 1 <= num_inference_steps <= num_train_timesteps),
            ("lr", lr, isinstance(lr, (int, float)) and lr > 0),
            ("warmup_steps", warmup_steps, isinstance(warmup_steps, int) and warmup_steps >= 0),
            ("lr_decay", lr_decay, lr_decay in ("none", "cosine")),
            ("sample_metrics", sample_metrics, isinstance(sample_metrics, bool)),
            ("sample_metric_batches", sample_metric_batches, isinstance(sample_metric_batches, int) and sample_metric_batches >= 0),
            (
                "sample_metric_steps",
                sample_metric_steps,
                sample_metric_steps is None or (isinstance(sample_metric_steps, int) and 1 <= sample_metric_steps <= num_train_timesteps),
            ),
        ):
            if not ok:
                msg = f"CanvasModule.{name}={value!r} is out of range"
                raise CanvasValidationError(msg)
        if program is not None:
            _check_program_formats(program, formats)
        self.save_hyperparameters(ignore=["schema", "region_formats", "program"])
        self.hparams["schema"] = schema.to_dict()
        self.hparams["region_formats"] = {k: f.to_dict() for k, f in all_formats.items()}
        self.hparams["program"] = program.to_dict() if program is not None else None
        self.formats: dict[str, RegionFormat] = formats
        self.canvas = SpatiotemporalCanvas(self.layout)
        keys = {module_key(n) for n in self.layout.regions}
        if len(keys) != len(self.layout.regions):
            msg = "region names must stay distinct when '.' is replaced by '__' (module keys)"
            raise CanvasValidationError(msg)
        self.encoders = nn.ModuleDict({module_key(n): RegionEncoder(f, self.layout, n) for n, f in formats.items()})
        self.decoders = nn.ModuleDict({module_key(n): RegionDecoder(f, self.layout, n) for n, f in formats.items()})
        self._frozen = set(program.regions_with(compile_mode="freeze")) & set(formats) if program is not None else set()
        for name in self._frozen:
            self.encoders[module_key(name)].requires_grad_(False)
            self.decoders[module_key(name)].requires_grad_(False)
        config = dict(backbone_config or {})
        config.setdefault("max_loops", max_loops)
        if freeze != "none":
            config.setdefault("freeze", freeze)
        topology = schema.topology
        if program is not None:
            topology = program.execution_topology()
            modes = program.execution_write_modes()
            if any(m != "add" for m in modes):
                config.setdefault("write_modes", list(modes))
        self.backbone = get_registry().backbones[backbone].obj(self.layout, topology, **config)
        self.noise_process: NoiseProcess = make_noise_process(
            noise_scheduler, num_train_timesteps, timestep_sampling, logit_mean, logit_std
        )
        self._register_masks(program, formats)
        # keys get a prefix: "train" would clash with nn.Module.train
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_metrics": nn.ModuleDict(
                    {module_key(name): torchmetrics.MeanMetric() for name in [*self._loss_regions(), "loss"]}
                )
                for stage in ("train", "val", "test")
            }
        )
        #: "{source}/{region}" -> metric of the sampled future (source "sample" or a baseline name);
        #: created on first use (baselines come with the batches), not part of the state dict
        self.future_metrics: dict[str, FutureFrameMetric] = {}

    # -- construction helpers ------------------------------------------------------------

    def _register_masks(self, program: CanvasProgram | None, formats: Mapping[str, RegionFormat]) -> None:
        """Buffers over the N positions: ``target_mask`` (predicted), ``noise_mask`` (noised),
        ``empty_mask`` (held at zero), ``position_weight`` (loss weight), and
        ``constant_canvas`` ((N, d) content of constant regions, or None)."""
        layout = self.layout
        n = layout.num_positions
        future = layout.output_mask()
        if program is None:
            # Positions that are noised and predicted: output regions at frames >= t_current.
            target = (layout.loss_weight_mask() > 0) & future
            fed = torch.zeros(n, dtype=torch.bool)
            for name in formats:
                fed[layout.region_indices(name)] = True
            target = target & fed
            weight = layout.loss_weight_mask() * target
            empty = torch.zeros(n, dtype=torch.bool)
        else:
            target = torch.zeros(n, dtype=torch.bool)
            weight = torch.zeros(n)
            empty = torch.zeros(n, dtype=torch.bool)
            for name in formats:
                rp, idx, w = program.regions[name], layout.region_indices(name), program.loss_weight(name)
                predicted = future[idx] & (layout.region_spec(name).is_output or rp.carrier == "filter") & (w > 0)
                target[idx] = predicted
                weight[idx] = w * predicted.float()
                if rp.carrier in ("deterministic", "memory"):
                    empty[idx] = predicted
        self.register_buffer("target_mask", target, persistent=False)
        self.register_buffer("noise_mask", target & ~empty, persistent=False)
        self.register_buffer("empty_mask", empty, persistent=False)
        self.register_buffer("position_weight", weight, persistent=False)
        constant = program.regions_with(compile_mode="constant") if program is not None else []
        content = None
        if constant:
            content = torch.zeros(n, layout.d_model)
            for name in constant:
                value = torch.as_tensor(program.regions[name].constant_value, dtype=torch.float32)
                content[layout.region_indices(name)] = value  # a number, or one d_model vector per token
        self.constant_canvas: torch.Tensor | None
        self.register_buffer("constant_canvas", content, persistent=False)

    def _loss_regions(self) -> list[str]:
        return [n for n in self.formats if bool(self.position_weight[self.layout.region_indices(n)].any())]

    # -- data -----------------------------------------------------------------------------

    def validate_batch(self, batch: Mapping[str, torch.Tensor]) -> int:
        """Check every region's tensor; return the batch size.

        Raises:
            BatchValidationError: naming the region and the expected and received shapes.
        """
        if not isinstance(batch, Mapping):
            msg = f"a canvas batch must be a dict keyed by region name, got {type(batch).__name__}"
            raise BatchValidationError(msg)
        size = None
        for name, fmt in self.formats.items():
            if name not in batch:
                msg = f"batch is missing region {name!r} (expected shape (B, {', '.join(map(str, expected_shape(fmt, self.layout, name)))})); got keys {sorted(batch)}"
                raise BatchValidationError(msg)
            x = batch[name]
            want = expected_shape(fmt, self.layout, name)
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            if not torch.is_tensor(x) or x.dim() != len(want) + 1 or tuple(x.shape[1:]) != want or (size is not None and x.shape[0] != size):
                msg = f"region {name!r}: expected a tensor of shape (B, {', '.join(map(str, want))}), received {got}"
                raise BatchValidationError(msg)
            size = x.shape[0]
        return int(size)

    def encode(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Encode and place every region: (B, N, d_model) clean canvas content.

        Constant regions hold their fixed content; frozen regions' tokens are detached.
        """
        b = self.validate_batch(batch)
        canvas = self.canvas.create_empty(b, device=self.device)
        if self.constant_canvas is not None:
            canvas = canvas + self.constant_canvas.to(canvas.dtype)
        for encoder in self.encoders.values():
            name = encoder.name
            tokens = encoder(batch[name].to(self.device, canvas.dtype))
            if name in self._frozen:
                tokens = tokens.detach()
            canvas = self.canvas.place(canvas, tokens, name)
        return canvas

    def decode(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Read every region back from canvas tokens into data-shaped tensors."""
        return {dec.name: dec(self.canvas.extract(tokens, dec.name)) for dec in self.decoders.values()}

    # -- model --------------------------------------------------------------------------

    def forward(
        self, batch: Mapping[str, torch.Tensor], timestep: torch.Tensor, canvas: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Predict every region's clean data.

        Args:
            batch: region tensors (the context; future output frames are noised).
            timestep: (B,) diffusion step.
            canvas: a noised canvas to denoise instead of noising the encoded batch.

        Returns:
            ``(predicted data per region, clean encoded canvas)``. Everything runs inside
            ``forward`` so FSDP's root hooks gather parameters before any unit is used.
        """
        clean = self.encode(batch)
        x = self._noised(clean, timestep) if canvas is None else canvas
        pred = self.decode(self.backbone(x, timestep))
        if self.program is not None:
            pred = self._run_program(pred, batch)
        return pred, clean

    def _noised(self, clean: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        noise = torch.randn_like(clean)
        noisy = self.noise_process.add_noise(clean, noise, timestep)
        return self._compose(noisy, clean)

    def _compose(self, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """``noisy`` at noised positions, 0 at emptied ones, ``clean`` elsewhere."""
        out = torch.where(self.noise_mask[None, :, None], noisy, clean)
        if self.program is not None and bool(self.empty_mask.any()):
            out = out.masked_fill(self.empty_mask[None, :, None], 0.0)
        return out

    def predicted_frames(self, name: str) -> torch.Tensor:
        """(t,) bool: which of region ``name``'s frames are predicted (the rest is context)."""
        t, h, w = self.layout.region_size(name)
        return self.target_mask[self.layout.region_indices(name).to(self.target_mask.device)].view(t, h * w).any(1)

    def update_masks(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{region: (B, t) bool}``: frames where each region's clock fires (all True without a program)."""
        b = self.validate_batch(batch)
        out = {}
        for name in self.formats:
            t = self.layout.region_size(name)[0]
            if self.program is None or self.program.regions[name].clock.every_frame:
                out[name] = torch.ones(b, t, dtype=torch.bool, device=self.device)
            else:
                out[name] = self.program.update_mask(name, batch, b).to(self.device)
        return out

    def _run_program(self, pred: dict[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Residual carriers and clock holds over the decoded predictions (see the class docstring)."""
        out = dict(pred)
        updates = None
        for name in self.formats:
            rp = self.program.regions[name]
            residual, clocked = rp.carrier == "residual", not rp.clock.every_frame
            if not residual and not clocked:
                continue
            if clocked and updates is None:
                updates = self.update_masks(batch)
            dec = pred[name]
            data = batch[name].to(dec.device, dec.dtype)
            shape = (dec.shape[0],) + (1,) * (dec.dim() - 2)  # broadcast a (B,) mask over one frame
            frames, state = [], data[:, 0]
            for k, predicted in enumerate(self.predicted_frames(name).tolist()):  # a loop over frames
                if predicted:
                    value = dec[:, k] + state if residual and k > 0 else dec[:, k]
                    if clocked:
                        value = torch.where(updates[name][:, k].view(shape), value, state)
                    state = value
                else:
                    value = dec[:, k] + data[:, k - 1] if residual and k > 0 else dec[:, k]
                    state = data[:, k]
                frames.append(value)
            out[name] = torch.stack(frames, dim=1)
        return out

    def position_losses(self, pred: dict[str, torch.Tensor], batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-position squared error (B, n_region) of every region, in data space."""
        out = {}
        for name, fmt in self.formats.items():
            err = (pred[name] - batch[name].to(pred[name].dtype)) ** 2
            t, h, w = self.layout.region_size(name)
            if fmt.kind == "patches":
                p = fmt.patch_size
                err = err.unflatten(3, (h, p)).unflatten(5, (w, p))  # (B, t, C, h, p, w, p)
                out[name] = err.mean(dim=(2, 4, 6)).flatten(1)  # (B, t*h*w)
            else:
                out[name] = err.mean(-1).repeat_interleave(h * w, dim=1)  # (B, t*h*w)
        return out

    def position_weights(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``{region: (B, n_region)}`` loss weight of each position for this batch.

        ``position_weight`` at predicted positions, 0 elsewhere, and 0 at the frames where the
        region's clock does not fire.
        """
        b = self.validate_batch(batch)
        clocked = self.program is not None and any(not self.program.regions[n].clock.every_frame for n in self.formats)
        updates = self.update_masks(batch) if clocked else {}
        out = {}
        for name in self.formats:
            w = self.position_weight[self.layout.region_indices(name).to(self.device)]  # (n_region,)
            w = w[None].expand(b, -1)
            if name in updates and not bool(updates[name].all()):
                _, h, wd = self.layout.region_size(name)
                w = w * updates[name].repeat_interleave(h * wd, dim=1).to(w.dtype)  # (B, t*h*w)
            out[name] = w
        return out

    def compute_loss(self, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, float]]]:
        """Noise, predict, decode: the weighted loss and ``{region: (loss, weight)}`` (no logging)."""
        b = self.validate_batch(batch)
        timestep = self.noise_process.training_timesteps(b, self.device)
        pred, clean = self(batch, timestep)
        weights = self.position_weights(batch)
        total, weight_sum = clean.new_zeros(()), clean.new_zeros(())
        regions = {}
        for name, loss in self.position_losses(pred, batch).items():
            w = weights[name]  # (B, n_region)
            if not bool(w.any()):
                continue
            total = total + (loss * w).sum()
            weight_sum = weight_sum + w.sum()
            regions[name] = ((loss * w).sum() / w.sum(), float(w.sum()))
        if not regions:  # no clock fired anywhere: a zero loss that still backpropagates
            total = total + sum(0.0 * p.sum() for p in pred.values())
        return total / weight_sum.clamp(min=1e-12), regions

    def _step(self, batch: Mapping[str, torch.Tensor], stage: str) -> torch.Tensor:
        loss, regions = self.compute_loss(batch)
        b = self.validate_batch(batch)
        if stage == "train" and not torch.isfinite(loss):
            detail = ", ".join(f"{n}={float(v):.4g}" for n, (v, _) in regions.items())
            msg = (
                f"non-finite training loss {float(loss)} at step {self.global_step} (per-region losses: {detail}); "
                "stopping before anything is saved. Lower the learning rate or check the data."
            )
            raise NonFiniteLossError(msg)
        metrics = self.metrics[f"{stage}_metrics"]
        for name, (value, weight) in regions.items():
            metrics[module_key(name)].update(value.detach(), weight=weight)
        metrics["loss"].update(loss.detach(), weight=b)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=b, sync_dist=not on_step)
        return loss

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Noise, predict, decode, weighted loss."""
        loss = self._step(batch, "train")
        if self._under_ddp():
            # Inactive loop embeddings (curriculum) and decoders of loss-free regions take no part
            # in this step; touching every trainable parameter with a zero keeps plain
            # `strategy="ddp"` working without find_unused_parameters (their gradient stays 0).
            loss = loss + 0.0 * sum(p.reshape(-1)[0] for p in self.parameters() if p.requires_grad)
        return loss

    def _under_ddp(self) -> bool:
        from lightning.pytorch.strategies import DDPStrategy

        trainer = self._trainer
        return trainer is not None and isinstance(trainer.strategy, DDPStrategy)

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Same loss on validation data, and metrics of the sampled future (first batches)."""
        self._step(batch, "val")
        if self.hparams.sample_metrics and batch_idx < self.hparams.sample_metric_batches:
            self.update_future_metrics(batch, batch_idx)

    def update_future_metrics(self, batch: Mapping[str, torch.Tensor], batch_idx: int = 0) -> None:
        """Sample the future of ``batch`` and score it, and every baseline, per region and frame.

        Sampling uses its own generator seeded by ``batch_idx`` (validation leaves the global
        RNG, hence training, untouched, and the same batch gets the same noise every time).
        Baselines: ``"last"`` (:func:`repeat_last_baseline`) and whatever the datamodule put
        under ``batch["baselines"]``.
        """
        generator = torch.Generator().manual_seed(int(batch_idx))
        sampled = self.sample(batch, num_inference_steps=self.hparams.sample_metric_steps, generator=generator)
        extra = baselines_from_batch(batch)
        for name, fmt in self.formats.items():
            frames = self.predicted_frames(name)
            if not bool(frames.any()):
                continue
            target = batch[name].to(self.device, torch.float32)
            sources = {"sample": sampled[name], "last": repeat_last_baseline(target, frames)}
            sources.update({b: regions[name] for b, regions in extra.items() if name in regions})
            idx = frames.nonzero().flatten().to(self.device)
            for source, value in sources.items():
                if value is None:
                    continue
                key = f"{source}/{name}"
                if key not in self.future_metrics:
                    with torch.inference_mode(False):  # ordinary state tensors, updatable outside validation too
                        metric = FutureFrameMetric(int(idx.numel()), images=fmt.kind == "patches")
                    self.future_metrics[key] = metric.to(self.device)
                pred = value.to(self.device, torch.float32).index_select(1, idx)
                self.future_metrics[key].update(pred, target.index_select(1, idx))

    def _log_future_metrics(self, stage: str) -> None:
        """``{stage}/sample/{region}/{metric}`` and ``{stage}/baseline/{name}/{region}/{metric}``,
        each the mean over the predicted frames, plus ``.../frame_{t}`` per canvas frame."""
        for key, metric in sorted(self.future_metrics.items()):
            if not metric.update_called:
                continue
            source, name = key.split("/", 1)
            prefix = f"{stage}/sample/{name}" if source == "sample" else f"{stage}/baseline/{source}/{name}"
            spec = self.layout.region_spec(name)
            frames = (self.predicted_frames(name).nonzero().flatten() * spec.period + spec.bounds[0]).tolist()
            for metric_name, values in metric.compute().items():
                self.log(f"{prefix}/{metric_name}", values.mean(), sync_dist=False)
                for t, value in zip(frames, values):
                    self.log(f"{prefix}/{metric_name}/frame_{t}", value, sync_dist=False)
            with torch.inference_mode(False):
                metric.reset()

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Same loss on test data, and metrics of the sampled future (first batches)."""
        self._step(batch, "test")
        if self.hparams.sample_metrics and batch_idx < self.hparams.sample_metric_batches:
            self.update_future_metrics(batch, batch_idx)

    def _log_regions(self, stage: str) -> None:
        names = {module_key(n): n for n in self.layout.regions}
        for key, metric in self.metrics[f"{stage}_metrics"].items():
            if key != "loss" and metric.update_called:
                self.log(f"{stage}/{names[key]}/loss", metric.compute(), sync_dist=True)
            metric.reset()

    def on_train_epoch_end(self) -> None:  # noqa: D102
        self._log_regions("train")

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        self._log_regions("val")
        self._log_future_metrics("val")

    def on_test_epoch_end(self) -> None:  # noqa: D102
        self._log_regions("test")
        self._log_future_metrics("test")

    # -- sampling -----------------------------------------------------------------------

    @torch.no_grad()
    def sample(
        self, batch: Mapping[str, torch.Tensor], num_inference_steps: int | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Denoise the future of the output regions from the context in ``batch``.

        Inputs and frames before ``t_current`` are taken from ``batch``; the returned dict
        holds every region: predicted frames decoded from the final canvas, context frames
        copied from ``batch``.
        """
        b = self.validate_batch(batch)
        steps = num_inference_steps or self.hparams.num_inference_steps
        clean = self.encode(batch)
        # start from pure noise at the predicted positions
        x = self._compose(torch.randn(clean.shape, generator=generator, device="cpu").to(clean), clean)
        pred_data: dict[str, torch.Tensor] = {}
        for t, step in self.noise_process.reverse(steps):
            timestep = torch.full((b,), t, device=self.device)
            pred_data, clean = self(batch, timestep, canvas=x)
            x0 = self.encode({**batch, **pred_data})  # the model's clean estimate, re-encoded
            x = self._compose(step(x0, x, generator), clean)
        # context frames are given, not predicted: return them as they came in
        for name, pred in pred_data.items():
            if name in batch:
                given = ~self.predicted_frames(name)
                pred[:, given] = batch[name][:, given.to(batch[name].device)].to(pred)
        return pred_data

    def predict_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int = 0) -> dict[str, Any]:
        """:meth:`sample` on a batch.

        With a program, the result holds every region with predicted frames plus every
        ``export`` region, each as the batch's data at its context frames and the prediction
        at its predicted frames, and, when a region has the ``memory`` carrier,
        ``"memory_out": {region: (B, *frame) value at its last frame}`` to feed the next
        window's first frame.
        """
        pred = self.sample(batch)
        if self.program is None:
            return pred
        out: dict[str, Any] = {}
        memory: dict[str, torch.Tensor] = {}
        for name in self.formats:
            frames = self.predicted_frames(name)
            rp = self.program.regions[name]
            if not (bool(frames.any()) or rp.compile_mode == "export" or rp.carrier == "memory"):
                continue
            value = pred[name]
            data = batch[name].to(value.device, value.dtype)
            merged = torch.where(frames.to(value.device).view((1, -1) + (1,) * (value.dim() - 2)), value, data)
            if bool(frames.any()) or rp.compile_mode == "export":
                out[name] = merged
            if rp.carrier == "memory":
                memory[name] = merged[:, -1]
        if memory:
            out["memory_out"] = memory
        return out

    # -- optimisation and scaling ---------------------------------------------------------

    def configure_optimizers(self):  # noqa: ANN201
        """AdamW over the trainable parameters only (with optional linear warm-up)."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=self.hparams.lr,
        )
        warm = self.hparams.warmup_steps
        cosine = self.hparams.lr_decay == "cosine"
        if not warm and not cosine:
            return optimizer
        total = None
        if cosine:
            total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else None
            if total is None or not math.isfinite(total) or total <= 0:
                msg = "CanvasModule(lr_decay='cosine') needs a finite run length: set Trainer(max_steps=...) or max_epochs"
                raise CanvasValidationError(msg)
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(warm, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def configure_model(self) -> None:
        """Shard per block with FSDP2 ``fully_shard`` when the strategy provides a device mesh."""
        mesh = getattr(self, "device_mesh", None)
        if mesh is None:
            return
        from torch.distributed.fsdp import fully_shard

        dp_mesh = mesh["data_parallel"] if "data_parallel" in (mesh.mesh_dim_names or ()) else mesh
        # Region codecs run outside `forward` (in training_step), so they are their own units:
        # FSDP2 gathers a unit's parameters in that unit's forward hook.
        for unit in [*self.shardable_blocks(), *self.encoders.values(), *self.decoders.values()]:
            fully_shard(unit, mesh=dp_mesh)
        fully_shard(self, mesh=dp_mesh)

    def shardable_blocks(self) -> list[nn.Module]:
        """The per-block units for sharding (looped blocks, else backbone blocks)."""
        blocks = list(getattr(self.backbone, "looped_blocks", []) or [])
        if not blocks:
            blocks = list(getattr(self.backbone, "blocks", []) or [])
        return blocks

    # -- checkpoints ---------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the canvas beside the weights (hyper-parameters can be overridden at load)."""
        checkpoint["canvas_schema"] = self.schema.to_dict()
        if self.program is not None:
            checkpoint["canvas_program"] = self.program.to_dict()
        blocks = list(getattr(self.backbone, "looped_blocks", []) or [])
        if blocks:  # so a loaded model runs with the loops and betas it was trained with
            checkpoint["canvas_loops"] = {"current_loops": blocks[0].current_loops, "betas": list(blocks[0].betas)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained with a different layout or topology, naming the difference."""
        saved = checkpoint.get("canvas_schema")
        if saved is not None:
            mine = self.schema.to_dict()
            for part in ("layout", "topology"):
                diff = schema_difference(saved.get(part, {}), mine[part], part)
                if diff:
                    msg = f"checkpoint was trained with a different canvas: {diff} (checkpoint vs this model)"
                    raise CanvasValidationError(msg)
        saved_program = checkpoint.get("canvas_program")
        mine_program = self.program.to_dict() if self.program is not None else None
        if (saved_program is None) != (mine_program is None):
            msg = (
                f"checkpoint was trained {'with' if saved_program is not None else 'without'} a CanvasProgram "
                f"and this model has {'one' if mine_program is not None else 'none'}; pass program= to match"
            )
            raise CanvasValidationError(msg)
        if saved_program is not None:
            for part in ("regions", "connections", "acyclic"):
                diff = schema_difference({part: saved_program.get(part)}, {part: mine_program[part]})
                if diff:
                    msg = f"checkpoint was trained with a different program: {diff} (checkpoint vs this model)"
                    raise CanvasValidationError(msg)
        loops = checkpoint.get("canvas_loops")
        if loops and list(getattr(self.backbone, "looped_blocks", []) or []):
            self.set_loops(int(loops.get("current_loops", 1)))
            self.set_betas(list(loops.get("betas", [1.0] * self.max_loops)))

    def set_loops(self, n: int) -> None:
        """Active loops of every looped block."""
        self.backbone.set_loops(n)

    def set_betas(self, betas: list[float]) -> None:
        """Per-loop sharpening factors of every looped block."""
        self.backbone.set_betas(betas)

    @property
    def max_loops(self) -> int:
        """Loops of the backbone's looped blocks."""
        return int(self.backbone.max_loops)
