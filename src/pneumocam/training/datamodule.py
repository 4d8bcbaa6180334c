"""The LightningDataModule of `pneumocam train`: the prepared splits, the samplers that balance them, and the
per-image targets training batches carry (findings, soft labels, group DRO indices, views, ranking strata)."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, WeightedRandomSampler

from pneumocam.config import BALANCE_ATTRIBUTES, RANK_STRATA, TrainConfig
from pneumocam.data.boxes import load_boxes, split_boxes
from pneumocam.data.datasets import (
    BoxedSplit,
    InMemorySplit,
    WithTargets,
    build_transform,
    dataset_files,
    dataset_labels,
    finding_targets,
    load_split_in_memory,
    parse_shares,
    sample_groups,
    sample_weights,
    single_class_groups,
    soft_targets,
    split_dataset,
    view_targets,
)
from pneumocam.data.preprocess import Normalization, data_contract
from pneumocam.errors import PneumocamError
from pneumocam.training.group_dro import group_ids
from pneumocam.training.ranking import hard_pairs

log = logging.getLogger(__name__)


class PneumoniaDataModule(L.LightningDataModule):
    """Train/val loaders over DATA/Processed; augmentation only on the training split.

    File path: a DatasetFolder per split, torchvision transforms on CPU workers.
    In-memory path: each split as one float16 tensor, whole batches indexed at once; augmentation and
    normalisation then happen on the device (PneumoniaModule.on_after_batch_transfer).
    """

    def __init__(self, data_dir: str | Path, norm: Normalization, config: TrainConfig):
        super().__init__()
        self.data_dir, self.norm, self.config = Path(data_dir), norm, config

    def setup(self, stage: str | None = None) -> None:
        train = split_dataset(self.data_dir, "train")
        # boxes first, so a set without any fails before its images are read into memory
        boxes = self._training_boxes(train) if self.config.box_loss_weight > 0 else None
        if self.config.in_memory == "on":
            self.train_set = load_split_in_memory(self.data_dir, "train", boxes)
            self.val_set = load_split_in_memory(self.data_dir, "val")
        else:
            size = data_contract(self.data_dir).image_size
            self.train_set = (BoxedSplit(train, boxes, self.norm, self.config.augment, size) if boxes is not None
                              else split_dataset(self.data_dir, "train",
                                                 build_transform(self.norm, self.config.augment, size)))
            self.val_set = split_dataset(self.data_dir, "val", build_transform(self.norm, "none"))

    def _training_boxes(self, train) -> torch.Tensor:
        boxes = split_boxes(dataset_files(train, self.data_dir), load_boxes(self.data_dir))
        if not bool((boxes[..., 2:] > 0).all(-1).any()):
            raise PneumocamError(f"--box-loss-weight needs boxes: no training image under {self.data_dir} has one in "
                                 "boxes.csv (prepare an RSNA-layout source, or train with --box-loss-weight 0)")
        return boxes

    def _sampler(self, dataset, train: bool):
        generator = torch.Generator().manual_seed(self.config.seed)
        if train and (self.config.balanced_sampling or self.config.balance_by or self.config.source_shares):
            labels = np.asarray(dataset.labels) if hasattr(dataset, "labels") else dataset_labels(dataset)
            sources = self._sources() if self.config.source_shares else None
            weights = sample_weights(labels, self._groups(), self.config.balanced_sampling, sources,
                                     parse_shares(self.config.source_shares) if sources else None)
            return WeightedRandomSampler(weights, len(labels), replacement=True, generator=generator)
        return RandomSampler(dataset, generator=generator) if train else SequentialSampler(dataset)

    def _training_files(self) -> tuple[list[str], np.ndarray]:
        """The training images' prepared files and labels, in sampler order."""
        train = split_dataset(self.data_dir, "train")
        return dataset_files(train, self.data_dir), dataset_labels(train)

    def _training_values(self, attributes: tuple[str, ...]) -> tuple[list[tuple], np.ndarray]:
        """The training images' values of `attributes` (datasets.sample_groups) and their labels, in sampler
        order."""
        files, labels = self._training_files()
        return sample_groups(self.data_dir, files, attributes), labels

    def _sources(self) -> list[str]:
        """The source folder of each training image (a multi-source prepare's patient prefix)."""
        sources = [g[0] for g in self._training_values(("source",))[0]]
        if not all(sources):
            raise PneumocamError(f"--source-shares: {self.data_dir} was not prepared from several sources (pneumocam "
                                 "prepare SOURCE SOURCE ... OUT names each image's source)")
        return sources

    def _groups(self) -> list[tuple] | None:
        """The training images' --balance-by groups, from the manifest (None when not balancing by any)."""
        attributes = _known_attributes("--balance-by", self.config.balance_by)
        if not attributes:
            return None
        groups, labels = self._training_values(attributes)
        if not any(any(g) for g in groups):
            raise PneumocamError(f"--balance-by {','.join(attributes)}: no training image under {self.data_dir} "
                                 "has a known value in manifest.csv")
        if lonely := single_class_groups(labels, groups):
            log.warning("--balance-by: groups with one class only keep their weight: %s",
                        ", ".join("/".join(v or "unknown" for v in g) for g in lonely))
        counts = {g: int(sum(x == g for x in groups)) for g in sorted(set(groups))}
        log.info("--balance-by %s: %s", ",".join(attributes),
                 ", ".join(f"{'/'.join(v or 'unknown' for v in g)} {n} images, prevalence "
                           f"{labels[[x == g for x in groups]].mean():.2f}" for g, n in counts.items()))
        return groups

    def _loader(self, dataset, train: bool) -> DataLoader:
        drop_last = train and len(dataset) > self.config.batch_size  # no BatchNorm on a batch of 1
        sampler = self._sampler(dataset, train)
        in_memory = isinstance(dataset, InMemorySplit)
        if train and (self.config.finding_loss_weight > 0 or self.config.soft_labels or self.config.group_dro
                      or self.config.view_adversary > 0 or self.config.rank_weight > 0):
            dataset = WithTargets(dataset, *self._training_targets())
        if in_memory:  # one tensor index per batch, no per-image collation
            batches = BatchSampler(sampler, self.config.batch_size, drop_last)
            return DataLoader(dataset, sampler=batches, batch_size=None, pin_memory=torch.cuda.is_available())
        return DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.config.num_workers, persistent_workers=self.config.num_workers > 0)

    def _training_targets(self) -> list[torch.Tensor]:
        """What training batches carry after the images, in this order: the finding targets, the teacher's soft
        labels, the group DRO indices, the view adversary's targets, the ranking strata (PneumoniaModule._unpack
        takes them apart)."""
        files = self._training_files()[0]
        targets = []
        if self.config.finding_loss_weight > 0 or hard_pairs(self.config.rank_weight, self.config.rank_hard_weight):
            flag = "--finding-loss-weight" if self.config.finding_loss_weight > 0 else "--rank-hard-weight"
            targets.append(self._known(finding_targets(self.data_dir, files), flag, "finding",
                                       '"Not Normal"', "has one in manifest.csv (prepare a source with RSNA's "
                                       "stage_2_detailed_class_info.csv or a finding column in metadata.csv)"))
        if self.config.soft_labels:
            targets.append(soft_targets(self.config.soft_labels, files, self.config.soft_label_weight))
        if self.config.group_dro:
            targets.append(self.dro_groups()[0])
        if self.config.view_adversary > 0:
            targets.append(self._known(view_targets(self.data_dir, files), "--view-adversary", "view", "PA",
                                       "is an AP or PA film in manifest.csv (prepare from DICOMs, or give "
                                       "metadata.csv a view column)"))
        if self.config.rank_weight > 0:
            targets.append(self.rank_strata()[0])
        return targets

    def _known(self, targets: torch.Tensor, flag: str, what: str, positive: str, how: str) -> torch.Tensor:
        """0/1/NaN training targets, refused when none is known (an option that silently learns nothing would
        look like one that worked), their counts logged."""
        if (known := int((~torch.isnan(targets)).sum())) == 0:
            raise PneumocamError(f"{flag} needs {what}s: no training image under {self.data_dir} {how}")
        log.info("%s: %d of %d training images have a %s, %d of them %s", flag, known, len(targets), what,
                 int(targets.nan_to_num(0).sum()), positive)
        return targets

    def dro_groups(self) -> tuple[torch.Tensor, list[str]]:
        """--group-dro: each training image's group index (attribute values x label) and the groups' names."""
        groups, labels = self._training_values(_known_attributes("--group-dro", self.config.group_dro))
        return group_ids(groups, labels)

    def rank_strata(self) -> tuple[torch.Tensor, list[str]]:
        """--rank-weight: each training image's stratum index (source x view) and the strata's names, logged with
        their sizes and pneumonias (a stratum of one class has no pair to rank)."""
        strata, labels = self._training_values(RANK_STRATA)
        ids, names = group_ids(strata)
        log.info("--rank-weight: pairs within source x view: %s", ", ".join(
            f"{name} {int((ids == i).sum())} images, {int(labels[(ids == i).numpy()].sum())} pneumonia"
            for i, name in enumerate(names)))
        return ids, names

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)


def _known_attributes(flag: str, attributes) -> tuple[str, ...]:
    """The manifest attributes a grouping option names, refused with the choices when one is not known."""
    if unknown := [a for a in attributes if a not in BALANCE_ATTRIBUTES]:
        raise PneumocamError(f"{flag}: unknown attribute(s) {', '.join(unknown)}; choose from "
                             f"{', '.join(BALANCE_ATTRIBUTES)}")
    return tuple(attributes)
