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
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from canvas_engineering.declare.schema import CanvasSchema
from canvas_engineering.declare.topology import CanvasTopology, TemporalFill
from canvas_engineering.errors import CanvasValidationError
from canvas_engineering.models.region_codecs import RegionFormat, expected_shape, parse_region_formats
from canvas_engineering.training.future_metrics import BASELINES_KEY
from canvas_engineering.validation import check_bool, check_choice, check_finite_float, check_int

__all__ = ["BaselineDataset", "CanvasDataModule", "Split", "TensorDictDataset", "TopologyKind", "split_rng"]

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
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            generator=generator,
        )

    def train_dataloader(self) -> DataLoader:
        """Return shuffled training batches (shuffle seeded by ``seed``)."""
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Return validation batches, in order."""
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Return test batches, in order."""
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Return the test split, in order (``CanvasModule.predict_step`` samples the future from it)."""
        return self._loader("test", shuffle=False)
