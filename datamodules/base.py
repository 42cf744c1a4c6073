"""``CanvasDataModule``: the contract every canvas datamodule follows.

A canvas datamodule yields batches that a :class:`~canvas_engineering.CanvasModule` built
from the datamodule's own :attr:`~CanvasDataModule.schema` and
:attr:`~CanvasDataModule.region_formats` accepts as they are:

* a batch is a dict keyed by region name; every value is a ``float32`` tensor of shape
  ``(B, *expected_shape(fmt, layout, region))`` (see :mod:`canvas_engineering.models.region_codecs`);
* ``val``/``test`` batches also carry ``batch["baselines"][name][region]``: baseline predictions
  shaped like the region's tensor (:meth:`CanvasDataModule.baselines`), which
  :class:`~canvas_engineering.CanvasModule` scores next to its sampled future;
* ``schema`` is built from the ``__init__`` arguments (``d_model`` among them), so it is known
  before any data is read and a CLI can link it into the model;
* ``__init__`` takes typed arguments only (ints, floats, strs, ``Literal`` choices) so
  LightningCLI/jsonargparse can build a datamodule from YAML, and validates them: a bad value
  raises :class:`~canvas_engineering.CanvasValidationError` naming the argument and the value;
* ``setup(stage)`` builds the splits deterministically from ``seed``; nothing is downloaded.

Subclasses implement :meth:`~CanvasDataModule.build_schema`,
:meth:`~CanvasDataModule.build_region_formats` and :meth:`~CanvasDataModule.build_dataset`,
and call :meth:`~CanvasDataModule._init_canvas` at the end of their ``__init__``.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.declare.topology import CanvasTopology, TemporalFill
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.models.region_codecs import RegionFormat, expected_shape, parse_region_formats
from canvas_engineering.training.future_metrics import BASELINES_KEY
from canvas_engineering.validation import check_bool, check_choice, check_finite_float, check_int

__all__ = [
    "BaselineDataset",
    "CanvasDataModule",
    "ResumableDataLoader",
    "ResumableSampler",
    "Split",
    "TensorDictDataset",
    "TopologyKind",
    "split_rng",
]

#: A dataset split.
Split = Literal["train", "val", "test"]
#: Topology choices offered by the built-in datamodules.
TopologyKind = Literal["causal_temporal", "dense"]

_SPLIT_IDS: dict[str, int] = {"train": 0, "val": 1, "test": 2}
_STAGE_SPLITS: dict[str, tuple[str, ...]] = {
    "fit": ("train", "val"),
    "validate": ("val",),
    "test": ("test",),
    "predict": ("test",),
}


def split_rng(seed: int, split: str) -> np.random.Generator:
    """Return an independent numpy generator per ``(seed, split)``.

    A split's samples depend only on the seed and the split, not on the sizes of the others.
    """
    return np.random.default_rng([int(seed), _SPLIT_IDS[split]])


class TensorDictDataset(Dataset):
    """Samples stored as a dict of tensors sharing their first dimension.

    Args:
        tensors: region name -> tensor ``(n, *sample_shape)``.

    Raises:
        CanvasValidationError: the tensors disagree on ``n`` (the message names them).

    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        sizes = {name: int(t.shape[0]) for name, t in tensors.items()}
        if len(set(sizes.values())) > 1:
            msg = f"TensorDictDataset: tensors have different lengths {sizes}"
            raise CanvasValidationError(msg)
        self.tensors = dict(tensors)
        self._len = next(iter(sizes.values()), 0)

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: t[index] for name, t in self.tensors.items()}


class BaselineDataset(Dataset):
    """A split whose items also carry baseline predictions under ``"baselines"``.

    Args:
        dataset: the split (items are dicts of region tensors).
        baselines: baseline name -> region -> a tensor, either ``(n, *sample_shape)`` (one
            prediction per item) or ``sample_shape`` (the same for every item).

    """

    def __init__(self, dataset: Dataset, baselines: Mapping[str, Mapping[str, torch.Tensor]]) -> None:
        self.dataset = dataset
        self.baselines = {name: dict(regions) for name, regions in baselines.items()}
        self._len = len(dataset)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self._len

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The wrapped split's tensors, when it is a :class:`TensorDictDataset`."""
        return self.dataset.tensors  # type: ignore[attr-defined]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        shapes = {name: tuple(t.shape) for name, t in item.items() if torch.is_tensor(t)}
        item[BASELINES_KEY] = {
            name: {r: (v if tuple(v.shape) == shapes.get(r) else v[index]) for r, v in regions.items()}
            for name, regions in self.baselines.items()
        }
        return item


class ResumableSampler(DistributedSampler):
    """Indices of a dataset in an order fixed by ``(seed, epoch)``, resumable in the middle of an epoch.

    The order of epoch ``e`` is ``torch.randperm(len(dataset))`` drawn from a generator seeded
    with ``seed + e`` (or ``0 .. n-1`` without ``shuffle``), then cut into ``num_replicas``
    interleaved shards as :class:`~torch.utils.data.DistributedSampler` does (it is one, so
    Lightning leaves it in place under DDP instead of wrapping it). The order depends on nothing
    else, in particular not on the global RNG, so an epoch reads the same samples whether the fit
    was interrupted or not. Like ``DistributedSampler``, the epoch only changes through
    :meth:`set_epoch`, which Lightning calls before every training epoch.

    :meth:`skip` makes the next pass start ``samples`` indices into epoch ``epoch``; a
    :class:`ResumableDataLoader` uses it to continue where a checkpoint stopped.

    Args:
        dataset: the dataset (only its length is read).
        shuffle: permute the indices every epoch.
        seed: seed of the permutations.
        num_replicas: shards (processes); each rank reads every ``num_replicas``-th index.
        rank: this process's shard.

    """

    def __init__(self, dataset: Dataset, *, shuffle: bool, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
        self._skip = 0
        #: ``(epoch, first sample)`` of the pass being read (``None`` before the first pass)
        self.current_pass: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Read epoch ``epoch`` next (a pending :meth:`skip` into another epoch is dropped)."""
        if int(epoch) != self.epoch:
            self._skip = 0
        super().set_epoch(int(epoch))

    def skip(self, epoch: int, samples: int) -> None:
        """Start the next pass ``samples`` indices into epoch ``epoch`` (a finished epoch: at the next one)."""
        epoch, samples = int(epoch), max(int(samples), 0)
        if samples >= self.num_samples:  # the epoch was read to its end: the next one starts from its beginning
            epoch, samples = epoch + 1, 0
        self.epoch, self._skip = epoch, samples

    def position(self) -> tuple[int, int]:
        """Return ``(epoch, first sample)`` where the next pass would start."""
        return self.epoch, self._skip

    def __iter__(self) -> Iterator[int]:
        """Yield this rank's indices of the current epoch, from the pending skip on."""
        start, self._skip = self._skip, 0
        self.current_pass = (self.epoch, start)
        return iter(list(super().__iter__())[start:])


class ResumableDataLoader(DataLoader):
    """A :class:`~torch.utils.data.DataLoader` whose position in the epoch goes into Lightning checkpoints.

    With a :class:`ResumableSampler`, :meth:`state_dict` is the epoch and the samples handed out
    so far (counted as batches leave the loader, so worker prefetching does not count), and
    :meth:`load_state_dict` makes the next pass continue from there. Lightning saves and
    restores the state of training dataloaders that have these two methods, so a fit resumed
    from a checkpoint written in the middle of an epoch reads the rest of that epoch, in the
    same order, instead of starting a new one. The ``generator`` (worker seeds) is reseeded
    from the sampler's seed and epoch at every pass, so workers get the same seeds after a
    resume as well. Any other sampler (e.g. one Lightning substitutes for ``overfit_batches``)
    makes it a plain ``DataLoader`` with an empty state.

    Example::

        >>> import torch
        >>> from canvas_engineering.datamodules import ResumableDataLoader, ResumableSampler, TensorDictDataset
        >>> data = TensorDictDataset({"x": torch.arange(6.0)})
        >>> loader = ResumableDataLoader(data, batch_size=2, sampler=ResumableSampler(data, shuffle=False, seed=0))
        >>> batches = iter(loader)
        >>> next(batches)["x"].tolist()
        [0.0, 1.0]
        >>> state = loader.state_dict()
        >>> state
        {'epoch': 0, 'samples': 2}
        >>> resumed = ResumableDataLoader(data, batch_size=2, sampler=ResumableSampler(data, shuffle=False, seed=0))
        >>> resumed.load_state_dict(state)
        >>> [b["x"].tolist() for b in resumed]
        [[2.0, 3.0], [4.0, 5.0]]

    """

    def _resumable_sampler(self) -> ResumableSampler | None:
        sampler = self.sampler
        return sampler if isinstance(sampler, ResumableSampler) else None

    def __iter__(self) -> Iterator[Any]:
        """Iterate one pass, counting the batches handed out."""
        sampler = self._resumable_sampler()
        if sampler is None:
            return super().__iter__()
        if self.generator is not None:
            epoch, _ = sampler.position()
            self.generator.manual_seed(int(sampler.seed) * 1_000_003 + epoch)
        return self._counted(super().__iter__(), sampler)

    def _counted(self, batches: Iterator[Any], sampler: ResumableSampler) -> Iterator[Any]:
        self._handed_out = 0
        self._pass = None
        for batch in batches:
            # the sampler's pass starts when the first indices are drawn: read it once a batch exists
            self._pass = sampler.current_pass
            self._handed_out += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """Return ``{"epoch", "samples"}``: where the pass being read stands (``{}`` without a ``ResumableSampler``)."""
        sampler = self._resumable_sampler()
        if sampler is None:
            return {}
        current = getattr(self, "_pass", None)
        if current is None:  # no batch handed out yet: where the next pass will start
            epoch, samples = sampler.position()
            return {"epoch": epoch, "samples": samples}
        epoch, start = current
        per_batch = self.batch_size if self.batch_size is not None else 1
        return {"epoch": epoch, "samples": min(start + self._handed_out * per_batch, len(sampler))}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continue the next pass where ``state_dict`` (from :meth:`state_dict`) stood."""
        sampler = self._resumable_sampler()
        if sampler is None or "epoch" not in state_dict:
            return
        sampler.skip(int(state_dict["epoch"]), int(state_dict.get("samples", 0)))
        self._pass = None


class CanvasDataModule(pl.LightningDataModule, ABC):
    """Base class of the canvas datamodules (see the module docstring for the contract).

    Args:
        batch_size: samples per batch (>= 1).
        num_workers: DataLoader worker processes (>= 0; 0 loads in the main process).
        seed: seed of the generated data and of the training shuffle.
        d_model: token width of the canvas :attr:`schema` (>= 1).

    Raises:
        CanvasValidationError: a bad argument, named with its value.

    """

    def __init__(self, *, batch_size: int, num_workers: int, seed: int, d_model: int) -> None:
        super().__init__()
        self.check_int("batch_size", batch_size, minimum=1)
        self.check_int("num_workers", num_workers, minimum=0)
        self.check_int("seed", seed, minimum=0)
        self.check_int("d_model", d_model, minimum=1)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.d_model = d_model
        # Collects the arguments of every __init__ in the class chain (the subclass's too).
        self.save_hyperparameters()
        self._datasets: dict[str, Dataset] = {}
        self._schema: CanvasSchema | None = None
        self._formats: dict[str, RegionFormat] = {}
        self._training_means: dict[str, torch.Tensor] | None = None

    # -- argument validation ----------------------------------------------------------------

    def _field(self, name: str) -> str:
        return f"{type(self).__name__}.{name}"

    def _fail(self, name: str, value: object, rule: str) -> None:
        # For the rules no shared check covers (multiples, sums of arguments, ...).
        msg = f"{self._field(name)}={value!r} {rule}"
        raise CanvasValidationError(msg)

    def check_int(self, name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> None:
        """Raise :class:`CanvasValidationError` unless ``value`` is an int in ``[minimum, maximum]``."""
        check_int(value, self._field(name), minimum=minimum, maximum=maximum)

    def check_float(
        self,
        name: str,
        value: object,
        minimum: float | None = None,
        maximum: float | None = None,
        *,
        open_min: bool = False,
    ) -> None:
        """Raise unless ``value`` is a finite number in ``[minimum, maximum]`` (``(minimum, ...`` if ``open_min``)."""
        check_finite_float(value, self._field(name), minimum=minimum, maximum=maximum, open_min=open_min)

    def check_choice(self, name: str, value: object, choices: Sequence[object]) -> None:
        """Raise unless ``value`` is one of ``choices``."""
        check_choice(value, self._field(name), choices)

    def check_bool(self, name: str, value: object) -> None:
        """Raise unless ``value`` is a ``bool``."""
        check_bool(value, self._field(name))

    # -- the canvas -----------------------------------------------------------------------------

    @abstractmethod
    def build_schema(self) -> CanvasSchema:
        """Build the canvas the batches fit from the ``__init__`` arguments."""

    @abstractmethod
    def build_region_formats(self) -> dict[str, RegionFormat]:
        """Region name -> :class:`RegionFormat` of every tensor of a batch."""

    @abstractmethod
    def build_dataset(self, split: Split) -> Dataset:
        """Build the dataset of one split, deterministic in ``seed``; items are dicts of float32 tensors."""

    def _init_canvas(self) -> None:
        """Build and cross-check :attr:`schema` and :attr:`region_formats` (end of a subclass ``__init__``)."""
        schema = self.build_schema()
        formats = parse_region_formats(self.build_region_formats(), schema.layout)
        self._schema, self._formats = schema, formats

    @staticmethod
    def topology_for(kind: TopologyKind, regions: Sequence[str]) -> CanvasTopology:
        """``"causal_temporal"`` (HOLD fill) or ``"dense"`` over ``regions``."""
        if kind == "dense":
            return CanvasTopology.dense(list(regions))
        return CanvasTopology.causal_temporal(list(regions), TemporalFill.HOLD)

    @property
    def schema(self) -> CanvasSchema:
        """The canvas (layout + topology) the batches fit; pass it to ``CanvasModule``."""
        if self._schema is None:
            msg = f"{type(self).__name__}.__init__ must call self._init_canvas() after validating its arguments"
            raise CanvasValidationError(msg)
        return self._schema

    @property
    def formats(self) -> dict[str, RegionFormat]:
        """Region name -> :class:`RegionFormat` (objects)."""
        self.schema  # noqa: B018 - raises if the canvas was not built
        return dict(self._formats)

    @property
    def region_formats(self) -> dict[str, dict[str, Any]]:
        """Which region each tensor feeds: region name -> ``RegionFormat`` dict (for ``CanvasModule``)."""
        return {name: fmt.to_dict() for name, fmt in self.formats.items()}

    @property
    def normalization(self) -> dict[str, dict[str, list[float]]]:
        """Region -> ``{"mean", "std"}`` applied to the batches (``{}``: none); the CLI links it into the model."""
        return {}

    def sample_shapes(self) -> dict[str, tuple[int, ...]]:
        """Region name -> shape of one sample's tensor (without the batch dimension)."""
        layout = self.schema.layout
        return {name: expected_shape(fmt, layout, name) for name, fmt in self.formats.items()}

    def describe(self) -> str:
        """Describe the batch: each tensor key, its shape, the region it feeds and that region's format."""
        layout = self.schema.layout
        b = self.batch_size
        lines = [
            f"{type(self).__name__}: dict batches of float32 tensors (batch_size={b}, seed={self.seed})",
            f"  {'key':<10}{'shape':<24}{'feeds region':<14}{'format':<22}{'bounds':<20}period",
        ]
        for name, fmt in self.formats.items():
            spec = layout.region_spec(name)
            shape = "(" + ", ".join(map(str, (b, *expected_shape(fmt, layout, name)))) + ")"
            if fmt.kind == "patches":
                kind = f"patches C={fmt.channels} p={fmt.patch_size}"
            else:
                kind = f"{fmt.kind} dim={fmt.dim}"
            bounds = "(" + ",".join(map(str, spec.bounds)) + ")"
            lines.append(f"  {name:<10}{shape:<24}{name:<14}{kind:<22}{bounds:<20}{spec.period}")
        n_conn = len(self.schema.topology.connections)
        lines.append(
            f"  canvas T={layout.T} H={layout.H} W={layout.W} d_model={layout.d_model} "
            f"t_current={layout.t_current}: {layout.num_positions} positions, {n_conn} connections"
        )
        return "\n".join(lines)

    # -- data -------------------------------------------------------------------------------------

    def check_sample(self, sample: Mapping[str, torch.Tensor], where: str) -> None:
        """Raise :class:`CanvasValidationError` unless ``sample`` has every region's expected shape, float32."""
        for name, want in self.sample_shapes().items():
            x = sample.get(name) if isinstance(sample, Mapping) else None
            if not torch.is_tensor(x) or tuple(x.shape) != want or x.dtype != torch.float32:
                got = f"{tuple(x.shape)} {x.dtype}" if torch.is_tensor(x) else type(x).__name__
                msg = (
                    f"{type(self).__name__} {where}: region {name!r} must be a float32 tensor of shape "
                    f"{want}, got {got}"
                )
                raise CanvasValidationError(msg)

    def setup(self, stage: str | None = None) -> None:
        """Build the splits ``stage`` needs (all three when ``stage`` is None); idempotent."""
        splits = _STAGE_SPLITS.get(stage or "", ("train", "val", "test"))
        for split in splits:
            if split in self._datasets:
                continue
            dataset = self.build_dataset(split)  # type: ignore[arg-type]
            if len(dataset) == 0:
                msg = f"{type(self).__name__}: the {split!r} split is empty"
                raise CanvasValidationError(msg)
            self.check_sample(dataset[0], f"{split} sample 0")
            if split != "train":
                baselines = self.baselines(split, dataset)
                if baselines:
                    dataset = BaselineDataset(dataset, baselines)
            self._datasets[split] = dataset

    def baselines(self, split: Split, dataset: Dataset) -> dict[str, dict[str, torch.Tensor]]:
        """Baseline predictions attached to the ``val``/``test`` items (``batch["baselines"]``).

        The default is ``"mean"``: each region's per-element mean over the training split's
        samples and frames, repeated over the region's frames (the best constant guess).
        Subclasses that know more (hidden state of generated data) add their own.
        """
        return {"mean": self.training_means()}

    def training_means(self) -> dict[str, torch.Tensor]:
        """Region -> the training split's mean of one frame, repeated to one sample's shape.

        Computed once from the training tensors (a :class:`TensorDictDataset`), else from the
        first 1,024 training items.
        """
        if self._training_means is None:
            train = self.dataset("train")
            if isinstance(train, TensorDictDataset):
                tensors = {name: train.tensors[name] for name in self.formats}
            else:
                items = [train[i] for i in range(min(len(train), 1024))]  # type: ignore[arg-type]
                tensors = {name: torch.stack([item[name] for item in items]) for name in self.formats}
            self._training_means = {
                name: x.float().mean(dim=(0, 1), keepdim=True)[0].expand_as(x[0]).clone() for name, x in tensors.items()
            }
        return self._training_means

    def dataset(self, split: Split) -> Dataset:
        """Return the dataset of a split (built on first use)."""
        if split not in self._datasets:
            self.check_choice("split", split, tuple(_SPLIT_IDS))
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        return self._datasets[split]

    def _loader(self, split: Split, shuffle: bool) -> DataLoader:
        # an own generator: worker seeds never come from (and never advance) the global RNG
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> ResumableDataLoader:
        """Return shuffled training batches, resumable mid-epoch (a :class:`ResumableDataLoader`).

        Epoch ``e`` reads the training split in the order of ``torch.randperm`` seeded with
        ``seed + e`` (:class:`ResumableSampler`), whatever happened before; under a distributed
        strategy each rank reads its shard of that order.
        """
        dataset = self.dataset("train")
        shards = getattr(self.trainer, "distributed_sampler_kwargs", None) if self.trainer is not None else None
        sampler = ResumableSampler(dataset, shuffle=True, seed=self.seed, **(shards or {}))
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def val_dataloader(self) -> DataLoader:
        """Return validation batches, in order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Return test batches, in order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Return the test split, in order (``CanvasModule.predict_step`` samples the future from it)."""
        return self._loader("test", shuffle=False)
