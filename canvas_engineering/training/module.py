"""``CanvasModule``: train a canvas diffusion model with ``lightning.Trainer.fit``.

The module holds the Lightning hooks; per-region behaviour (carriers, clocks, compile and
write modes), masks, losses, sampling, metrics and the optimiser live in
:mod:`canvas_engineering.training`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import nn

from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.declare.spatiotemporal_canvas import SpatiotemporalCanvas
from canvas_engineering.errors import BatchValidationError, NonFiniteLossError
from canvas_engineering.models.region_codecs import RegionFormat, parse_region_formats
from canvas_engineering.plugin_host.host import PluginRegistry, get_registry
from canvas_engineering.program import CanvasProgram
from canvas_engineering.training import arguments, losses, masks, metrics, sampling
from canvas_engineering.training.arguments import schema_difference
from canvas_engineering.training.batches import Batch, validate_batch
from canvas_engineering.training.canvas_records import check_canvas_records, loop_record, write_canvas_records
from canvas_engineering.training.components import build_backbone, build_codecs
from canvas_engineering.training.distributed import shard_per_block, touch_unused_under_ddp
from canvas_engineering.training.frame_rules import apply_frame_rules
from canvas_engineering.training.lr import WarmupCosine, adamw_with_schedule
from canvas_engineering.training.noise_process import (
    NoiseProcess,
    NoiseSchedulerName,
    TimestepSampling,
    make_noise_process,
)
from canvas_engineering.training.normalization import Normalization, check_normalization, denormalize, normalize
from canvas_engineering.training.pretrained import load_pretrained, save_pretrained
from canvas_engineering.training.region_behaviour import region_behaviours

__all__ = ["BatchValidationError", "CanvasModule", "NonFiniteLossError", "WarmupCosine", "schema_difference"]

#: offset of the evaluation loss's generator seeds (apart from the sampled-future metrics', seeded by batch_idx)
_EVALUATION_SEED = 0x5EED_0000


def _evaluation_generator(batch_idx: int) -> torch.Generator:
    """Return the CPU generator of the validation/test loss of batch ``batch_idx`` (seeded by it)."""
    return torch.Generator().manual_seed(_EVALUATION_SEED + int(batch_idx))


class CanvasModule(pl.LightningModule):
    """A canvas diffusion model: per-region encoders/decoders around a (looped) backbone.

    A step encodes and places each region, noises the predicted positions (output regions at
    frames ``>= t_current``; the rest is clean context), lets the backbone predict the clean
    canvas and weighs each decoded region's per-position error in data space. Each region runs
    by its :class:`~canvas_engineering.CanvasProgram` entry (:mod:`canvas_engineering.training`);
    without ``program=``, by the default program, which is the plain schema semantics.

    Args:
        schema: a ``CanvasSchema``, its dict, a preset name or a JSON path (optional with ``program``).
        region_formats: region name -> :class:`RegionFormat` (or its dict) for every fed region.
        backbone: registered backbone name (``canvas-engineering plugins``).
        backbone_config: keyword arguments for the backbone factory.
        max_loops: loops of each looped block (driven by ``LoopCurriculum``).
        freeze: freeze strategy for pretrained backbones (``"none"`` for from-scratch ones).
        noise_scheduler: ``"ddpm"``, ``"ddim"`` or ``"flow"`` (:mod:`canvas_engineering.training.noise_process`).
        num_train_timesteps: diffusion steps of the scheduler.
        num_inference_steps: denoising steps of :meth:`sample`.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up steps.
        lr_decay: ``"none"`` or ``"cosine"`` (to 0 at ``Trainer.estimated_stepping_batches``).
        program: a :class:`CanvasProgram`, its dict, JSON text or path; its schema is the model's
            (a given schema must agree). Saved as a dict (``None`` when none was given).
        timestep_sampling: training noise levels: ``"uniform"`` or ``"logit_normal"``
            (sigmoid of ``N(logit_mean, logit_std)``; a positive mean trains more at high noise).
        logit_mean: mean of the logit-normal draw.
        logit_std: its standard deviation (> 0).
        sample_metrics: score the sampled future and the baselines at validation and test
            (``val/sample/{region}/...``, ``val/baseline/{name}/{region}/...``).
        sample_metric_batches: how many batches of each validation/test epoch are sampled.
        sample_metric_steps: denoising steps for those samples (``None``: ``num_inference_steps``).
        horizon_weights: loss-weight factors of each region's predicted frames in order (first
            predicted frame first; frames beyond the list take its last entry); ``None``: all 1.
        normalization: region -> ``{"mean": [...], "std": [...]}`` (per element, or per channel of a
            patch region) the datamodule applied to the data (``EpisodeDataModule.normalization``;
            the CLI links it); saved with the hyperparameters so :meth:`denormalize` maps outputs
            back to data units. ``None``: the data was not normalised.
        registry: plugin registry of the backbone (``None``: :func:`~canvas_engineering.get_registry`;
            not saved).

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
        horizon_weights: list[float] | None = None,
        normalization: dict[str, dict[str, list[float]]] | None = None,
        registry: PluginRegistry | None = None,
    ) -> None:
        super().__init__()
        schema, given = arguments.resolve_schema_and_program(schema, program)
        self.schema, self.layout = schema, schema.layout
        #: the process program: the one given, else the default (every region at its defaults)
        self.program: CanvasProgram = given if given is not None else CanvasProgram(schema)
        #: region -> its carrier, clock, compile mode and loss weight, chosen once
        self.regions = region_behaviours(self.program)
        all_formats = parse_region_formats(region_formats or {}, self.layout)
        fed = {n: f for n, f in all_formats.items() if self.regions[n].compile_mode.has_codec}
        self.formats: dict[str, RegionFormat] = fed
        arguments.check_fed_regions(self.regions, fed, list(self.layout.regions))
        normalization = check_normalization(normalization, fed)
        self.save_hyperparameters(ignore=["schema", "region_formats", "program", "registry"])
        arguments.check_hyperparameters(self.hparams)
        arguments.record_canvas_hyperparameters(self.hparams, schema, all_formats, given)
        self.canvas = SpatiotemporalCanvas(self.layout)
        self.configure_models(registry if registry is not None else get_registry())
        self.noise_process: NoiseProcess = make_noise_process(
            noise_scheduler, num_train_timesteps, timestep_sampling, logit_mean, logit_std
        )
        self.configure_losses()
        self.configure_metrics()
        self._held = [n for n in fed if self.regions[n].clock.holds]
        # without a program, predict_step returns every fed region, as it always has
        self._outputs = sampling.PredictionOutputs.choose(self.regions, fed, self.predicted_frames, every=given is None)

    def configure_models(self, registry: PluginRegistry) -> None:
        """Build the region encoders/decoders and the backbone running the program's execution topology."""
        hp = self.hparams
        self.encoders, self.decoders = build_codecs(self.formats, self.program, self.regions)
        self.backbone = build_backbone(registry, hp.backbone, self.program, hp.backbone_config, hp.max_loops, hp.freeze)

    def configure_losses(self) -> None:
        """Register the ``(N,)`` position masks and the content of fixed (constant) regions as buffers."""
        built = masks.position_masks(self.layout, [self.regions[n] for n in self.formats])
        for name in ("target", "noise", "empty"):
            self.register_buffer(f"{name}_mask", getattr(built, name), persistent=False)
        horizon = masks.horizon_scale(self.layout, built.target, self.formats, self.hparams.horizon_weights)
        self.register_buffer("position_weight", built.weight * horizon, persistent=False)
        fixed = [n for n, r in self.regions.items() if not r.compile_mode.has_codec]
        self.constant_canvas: torch.Tensor | None
        self.register_buffer("constant_canvas", masks.constant_canvas(self.program, fixed), persistent=False)

    def configure_metrics(self) -> None:
        """Build the per-stage region-loss collections and the sampled-future metrics."""
        weighted = [n for n in self.formats if bool(masks.region_slice(self.position_weight, self.layout, n).any())]
        self.metrics = metrics.region_loss_metrics(arguments.module_key(n) for n in weighted)
        #: scores of the sampled future and baselines, created on first use (not in the state dict)
        self.future_metrics = metrics.SampledFutureMetrics()

    @property
    def normalization(self) -> Normalization:
        """Region -> the ``mean``/``std`` the training data was normalised with (``{}``: none)."""
        return dict(self.hparams.get("normalization") or {})

    def denormalize(self, outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map region tensors (a batch, :meth:`sample` or :meth:`predict_step` output) to data units."""
        return denormalize(outputs, self.normalization, self.formats)

    def normalize(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map region tensors in data units to the units the model was trained on."""
        return normalize(data, self.normalization, self.formats)

    def validate_batch(self, batch: Batch) -> int:
        """Check every fed region's tensor and return the batch size (:class:`BatchValidationError` names it)."""
        return validate_batch(batch, self.formats, self.layout)

    def encode(self, batch: Batch) -> torch.Tensor:
        """Encode and place every region: (B, N, d_model) clean canvas (constants fixed, frozen detached)."""
        # in the weights' dtype: under bf16-true/64-true the data is cast to it before the codecs
        canvas = self.canvas.create_empty(self.validate_batch(batch), device=self.device, dtype=self.dtype)
        if self.constant_canvas is not None:
            canvas = canvas + self.constant_canvas.to(canvas.dtype)
        for encoder in self.encoders.values():
            tokens = encoder(batch[encoder.name].to(self.device, canvas.dtype))
            if self.regions[encoder.name].compile_mode.detaches_tokens:
                tokens = tokens.detach()
            canvas = self.canvas.place(canvas, tokens, encoder.name)
        return canvas

    def decode(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Read every region back from canvas tokens into data-shaped tensors."""
        return {dec.name: dec(self.canvas.extract(tokens, dec.name)) for dec in self.decoders.values()}

    def forward(
        self,
        batch: Batch,
        timestep: torch.Tensor,
        canvas: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Predict every region's clean data at (B,) ``timestep``: ``(predictions, clean canvas)``.

        Noises the encoded ``batch`` unless ``canvas`` is given (all in forward, for FSDP's root hooks),
        with noise from ``generator`` (``None``: the global RNG).
        """
        clean = self.encode(batch)
        x = self._noised(clean, timestep, generator) if canvas is None else canvas
        decoded = self.decode(self.backbone(x, timestep))
        updates = self.update_masks(batch, self._held)
        return apply_frame_rules(decoded, batch, self.regions, self.predicted_frames, updates), clean

    def _noised(
        self, clean: torch.Tensor, timestep: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if generator is None:
            noise = torch.randn_like(clean)
        else:  # drawn where the generator lives, then moved: the same numbers on every device
            noise = torch.randn(clean.shape, generator=generator, device=generator.device).to(clean)
        noisy = self.noise_process.add_noise(clean, noise, timestep)
        return self.compose(noisy, clean)

    def compose(self, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """Return ``noisy`` at noised positions, 0 at emptied ones, ``clean`` elsewhere."""
        return masks.compose_canvas(noisy, clean, self.noise_mask, self.empty_mask)

    def predicted_frames(self, name: str) -> torch.Tensor:
        """Return (t,) bool: which of region ``name``'s frames are predicted (the rest is context)."""
        return masks.predicted_frames(self.target_mask, self.layout, name)

    def update_masks(self, batch: Batch, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Return ``{region: (B, t) bool}``: frames where each fed region's (or each of ``names``') clock fires."""
        b = self.validate_batch(batch)
        names = list(self.formats) if names is None else names
        return {n: self.regions[n].clock.update_mask(batch, b, self.device) for n in names}

    def position_losses(self, pred: dict[str, torch.Tensor], batch: Batch) -> dict[str, torch.Tensor]:
        """Return the per-position squared error (B, n_region) of every region, in data space."""
        return losses.position_losses(pred, batch, self.formats, self.layout)

    def position_weights(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Return ``{region: (B, n_region)}`` loss weights: ``position_weight``, 0 where a clock does not fire."""
        b = self.validate_batch(batch)
        updates = self.update_masks(batch, self._held)
        return losses.position_weights(self.position_weight, self.layout, list(self.formats), updates, b)

    def compute_loss(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, float]]]:
        """Noise, predict, decode: the weighted loss and ``{region: (loss, weight)}`` (no logging).

        Timesteps and noise come from ``generator`` (``None``: the global RNG, as in training).
        """
        timestep = self.noise_process.training_timesteps(self.validate_batch(batch), self.device, generator)
        pred, clean = self(batch, timestep, generator=generator)
        return losses.weighted_loss(self.position_losses(pred, batch), self.position_weights(batch), pred, clean)

    def _step(self, batch: Batch, stage: str, generator: torch.Generator | None = None) -> torch.Tensor:
        loss, regions = self.compute_loss(batch, generator)
        b = self.validate_batch(batch)
        losses.check_finite_loss(loss, regions, self.global_step, stage)  # every stage: NaN data is an error
        metrics.update_region_losses(self.metrics[f"{stage}_metrics"], regions, loss, b)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=not on_step, batch_size=b,
                 sync_dist=not on_step)  # fmt: skip
        return loss

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """Noise, predict, decode, weighted loss."""
        loss = self._step(batch, "train")
        return touch_unused_under_ddp(self, loss) if self._trainer is not None else loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Take the loss on validation data, and score the sampled future (first batches)."""
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        """Take the loss on test data, and score the sampled future (first batches)."""
        self._evaluate(batch, batch_idx, "test")

    def _evaluate(self, batch: Batch, batch_idx: int, stage: str) -> None:
        # the same timesteps and noise for a batch at every evaluation, and the global RNG (training's
        # draws, which a resumed fit must repeat exactly) is left alone
        self._step(batch, stage, _evaluation_generator(batch_idx))
        if self.hparams.sample_metrics and batch_idx < self.hparams.sample_metric_batches:
            self.update_future_metrics(batch, batch_idx)

    def update_future_metrics(self, batch: Batch, batch_idx: int = 0) -> None:
        """Sample the future of ``batch`` and score it and every baseline (``"last"``, ``batch["baselines"]``).

        The noise comes from a generator seeded by ``batch_idx``: training's global RNG is left alone.
        """
        generator = torch.Generator().manual_seed(int(batch_idx))
        sampled = self.sample(batch, num_inference_steps=self.hparams.sample_metric_steps, generator=generator)
        images = {n: f.kind == "patches" for n, f in self.formats.items()}
        self.future_metrics.update(sampled, batch, images, self.predicted_frames, self.device)

    def _log_epoch(self, stage: str) -> None:
        names = {arguments.module_key(n): n for n in self.layout.regions}
        metrics.log_region_losses(self, self.metrics[f"{stage}_metrics"], stage, names)
        if stage != "train":
            self.future_metrics.log(self, stage)

    def on_train_epoch_end(self) -> None:  # noqa: D102
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:  # noqa: D102
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:  # noqa: D102
        self._log_epoch("test")

    @torch.no_grad()
    def sample(
        self, batch: Batch, num_inference_steps: int | None = None, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """Denoise every fed region's predicted frames from the context in ``batch`` (returned as given)."""
        steps = num_inference_steps or self.hparams.num_inference_steps
        return sampling.denoise_future(self, batch, steps, generator)

    def predict_step(self, batch: Batch, batch_idx: int = 0) -> dict[str, Any]:
        """Return :meth:`sample` of every fed region (with a program: of the predicted and ``export`` ones).

        With a ``memory`` carrier, ``"memory_out": {region: (B, *frame) last frame}`` feeds the next window.
        """
        return self._outputs.shape(self.sample(batch))

    def configure_optimizers(self):
        """AdamW over the trainable parameters only (optional linear warm-up and cosine decay)."""
        return adamw_with_schedule(self.parameters(), self.hparams, self._trainer)

    def configure_model(self) -> None:
        """Shard per block with FSDP2 ``fully_shard`` when the strategy provides a device mesh."""
        mesh = getattr(self, "device_mesh", None)
        if mesh is not None:  # region codecs run outside forward: they are units of their own
            units = [*self.shardable_blocks(), *self.encoders.values(), *self.decoders.values()]
            shard_per_block(self, units, mesh)

    def shardable_blocks(self) -> list[nn.Module]:
        """Return the per-block units for sharding (looped blocks, else backbone blocks)."""
        return self._looped_blocks() or list(getattr(self.backbone, "blocks", []) or [])

    def _looped_blocks(self) -> list[nn.Module]:
        return list(getattr(self.backbone, "looped_blocks", []) or [])

    # Lightning's classmethod that refuses to be called on an instance (plain classmethod if it moves)
    @getattr(pl.utilities.model_helpers, "_restricted_classmethod", classmethod)
    def load_from_checkpoint(
        cls, checkpoint_path: Any, *args: Any, allow_non_finite: bool = False, **kwargs: Any
    ) -> CanvasModule:
        """Load like :meth:`lightning.pytorch.LightningModule.load_from_checkpoint`, refusing bad files by name.

        Before Lightning reads it, a local file is checked
        (:func:`~canvas_engineering.models.loop_checkpoint.check_lightning_checkpoint`): a missing
        file, a folder, a damaged file or one that is not a Lightning checkpoint (a loop
        checkpoint: use :func:`~canvas_engineering.load_loop_checkpoint`) raises
        :class:`~canvas_engineering.errors.CheckpointFileError` naming the file. Loaded weights
        holding NaN or an infinity are refused too, unless ``allow_non_finite``.

        Args:
            checkpoint_path: the checkpoint (a path, URL or file object, as for Lightning).
            *args: passed to Lightning (``map_location``, ``hparams_file``, ``strict``, ...).
            allow_non_finite: return a model whose weights hold NaN or infinities.
            **kwargs: passed to Lightning (hyper-parameter overrides, ...).

        """
        from canvas_engineering.models.loop_checkpoint import check_finite_weights, check_lightning_checkpoint

        caller = f"{cls.__name__}.load_from_checkpoint"
        check_lightning_checkpoint(checkpoint_path, caller)
        model = super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        if not allow_non_finite:
            check_finite_weights(model, checkpoint_path, caller)
        return model

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record the canvas beside the weights (hyper-parameters can be overridden at load)."""
        blocks = self._looped_blocks()
        write_canvas_records(checkpoint, self.schema.to_dict(), self.hparams["program"], blocks)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained with a different canvas or program; restore loops and betas."""
        check_canvas_records(checkpoint, self.schema.to_dict(), self.hparams["program"])
        if self._looped_blocks() and (record := loop_record(checkpoint, self.max_loops)):
            self.set_loops(record[0])
            self.set_betas(record[1])

    def set_loops(self, n: int) -> None:
        """Set the active loops of every looped block."""
        self.backbone.set_loops(n)

    def set_betas(self, betas: list[float]) -> None:
        """Set the per-loop sharpening factors of every looped block."""
        self.backbone.set_betas(betas)

    @property
    def max_loops(self) -> int:
        """Loops of the backbone's looped blocks."""
        return int(self.backbone.max_loops)

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        metrics: Mapping[str, float] | None = None,
        data_description: str | None = None,
    ) -> Path:
        """Write ``model.safetensors``, ``config.json`` and a model card (``README.md``) to a folder.

        The config holds every hyper-parameter (schema, program, region formats, backbone and
        its configuration, noise process, normalisation statistics), the loops, the betas and
        the package version; the weights carry a SHA-256 checked on load. See
        :mod:`canvas_engineering.training.pretrained`.

        Args:
            save_directory: the folder (created if missing; files in it are replaced atomically).
            metrics: final metrics for the model card (default: the trainer's ``callback_metrics``).
            data_description: a sentence on the training data for the model card (default: the
                schema's metadata).

        Returns:
            The folder.

        """
        return save_pretrained(self, save_directory, metrics=metrics, data_description=data_description)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_path: str | Path,
        *,
        registry: PluginRegistry | None = None,
        allow_non_finite: bool = False,
    ) -> CanvasModule:
        """Load a folder written by :meth:`save_pretrained`, in eval mode.

        ``pretrained_path`` is a local folder or, when no such path exists, a Hugging Face Hub
        repository id (``owner/name``) fetched with ``huggingface_hub.snapshot_download``. The
        loaded model gives the same outputs as the saved one, bit for bit.

        Raises:
            CheckpointFileError: the folder, config or weights are missing, foreign, damaged,
                or hold non-finite weights (unless ``allow_non_finite``); the message names the file.

        """
        return load_pretrained(cls, pretrained_path, registry=registry, allow_non_finite=allow_non_finite)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload canvas-engineering model",
        metrics: Mapping[str, float] | None = None,
        data_description: str | None = None,
    ) -> str:
        """Save to a temporary folder and upload it to the Hugging Face Hub (``huggingface_hub``); return its URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, metrics=metrics, data_description=data_description)
            info = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
        return str(getattr(info, "commit_url", info))
