"""Training pieces for PyTorch Lightning: a thin LightningModule around PneumoniaNet and its DataModule.

The train step (commands/train.py) puts them into a Trainer with trainer_hooks' plugin and callback; only these
modules import lightning.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, WeightedRandomSampler
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from pneumocam.augment import AUGMENT_RANGES, augment_batch
from pneumocam.boxes import cell_coverage, load_boxes, split_boxes
from pneumocam.cam import class_activation_map
from pneumocam.config import BALANCE_ATTRIBUTES, TrainConfig
from pneumocam.data import (
    BoxedSplit,
    InMemorySplit,
    WithTargets,
    build_transform,
    dataset_files,
    dataset_labels,
    finding_targets,
    load_split_in_memory,
    parse_shares,
    positive_weight,
    sample_groups,
    sample_weights,
    single_class_groups,
    soft_targets,
    split_dataset,
)
from pneumocam.errors import PneumocamError
from pneumocam.group_dro import GroupWeights, group_ids
from pneumocam.guidance import box_guidance_loss
from pneumocam.model import FEATURE_CHANNELS, PneumoniaNet
from pneumocam.preprocess import Normalization

log = logging.getLogger(__name__)

OPTIMIZER_CLASSES = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
# metric -> mode for best.ckpt; val_loss by default, since AUROC can peak while BatchNorm statistics still lag
MONITOR_MODES = {"val_loss": "min", "val_auroc": "max", "val_acc": "max"}


def _warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Batch(NamedTuple):
    """A batch taken apart (PneumoniaModule._unpack); `targets` are the labels the loss learns (blended with a
    teacher's probability under --soft-labels)."""

    images: torch.Tensor
    labels: torch.Tensor
    masks: list
    findings: torch.Tensor | None
    groups: torch.Tensor | None
    targets: torch.Tensor


class PneumoniaModule(L.LightningModule):
    """Loss, metrics and optimisation around a PneumoniaNet; the network itself stays a plain nn.Module."""

    def __init__(self, config: dict, pos_weight: float, normalization: dict, metadata: dict,
                 load_pretrained: bool = True, dro_groups: list[str] | None = None):
        super().__init__()
        self.save_hyperparameters(ignore=["load_pretrained"])
        self.config = config
        # on resume the weights come from the checkpoint, so do not fetch pretrained ones again
        self.net = PneumoniaNet(config["pretrained"] if load_pretrained else "none")
        self.loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight]))
        # validate_args=False: torchmetrics' label check (torch.unique, then a Python `if`) waits for the
        # device every step; the labels come from prepare's 0/1 folders, so there is nothing to check
        self.train_acc = BinaryAccuracy(validate_args=False)
        self.val_acc = BinaryAccuracy(validate_args=False)
        self.val_auroc = BinaryAUROC(validate_args=False)
        self._augment_generator = torch.Generator().manual_seed(config["seed"])
        if self._finding_weight() > 0:  # training only: checkpoints.network_state keeps the "net." entries
            self.finding_head = nn.Linear(FEATURE_CHANNELS, 1)
        if dro_groups:  # --group-dro: the groups' names (hparams) and their weights (a buffer, resumed with the run)
            self.group_weights = GroupWeights(len(dro_groups))
        # kept outside the module tree so the checkpoint's state_dict keys stay those of PneumoniaNet
        object.__setattr__(self, "_run_net", torch.compile(self.net) if config["compile"] else self.net)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """In-memory path: batches arrive on the device in [0, 1]; augment them (and their box masks, alike)
        there, then normalise."""
        if self.config["in_memory"] != "on":
            return batch
        images, labels, *rest = batch
        split = len(rest) - self._target_count()
        masks, targets = rest[:split], rest[split:]
        images = images.float()
        augment = self.config["augment"]
        if self.trainer.training and augment != "none":
            both = augment_batch(torch.cat([images, *(m.float() for m in masks)], dim=1), self._augment_generator,
                                 AUGMENT_RANGES[augment])
            images, masks = both[:, :1], [both[:, 1:]] if masks else []
        norm = self.hparams["normalization"]
        return ((images - norm["mean"]) / norm["std"], labels, *masks, *targets)

    def _target_count(self) -> int:
        """How many per-image targets training batches carry after the images, labels and box masks."""
        on = (self._finding_weight() > 0, self.config.get("soft_labels"), self.hparams.get("dro_groups"))
        return sum(map(bool, on)) if self.trainer.training else 0

    def _finding_weight(self) -> float:
        return float(self.config.get("finding_loss_weight", 0.0))  # absent from runs made before the option

    def _unpack(self, batch) -> Batch:
        """Training batches carry the findings, the teacher's soft labels and the group indices last
        (data.WithTargets) when those are on; validation batches never do."""
        images, labels, *rest = batch
        training = self.trainer.training
        groups = rest.pop() if self.hparams.get("dro_groups") and training else None
        targets = labels.float()
        if self.config.get("soft_labels") and training:  # NaN: an image the teacher does not name keeps its label
            soft, weight = rest.pop(), float(self.config["soft_label_weight"])
            targets = torch.where(torch.isnan(soft), targets, (1 - weight) * targets + weight * soft)
        findings = rest.pop() if self._finding_weight() > 0 and training else None
        return Batch(images, labels, rest, findings, groups, targets)

    def _finding_loss(self, features: torch.Tensor, findings: torch.Tensor) -> torch.Tensor:
        """BCE of the auxiliary "Not Normal" output over the images whose finding is known (NaN: unknown);
        masked rather than indexed, so the step never waits for the device to count them."""
        known = ~torch.isnan(findings)
        logits = self.finding_head(torch.flatten(self.net.pool(features), 1))[:, 0].float()
        each = F.binary_cross_entropy_with_logits(logits, torch.where(known, findings, 0.0), reduction="none")
        return (each * known).sum() / known.sum().clamp(min=1)

    def _step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batches are (images (B, 1, 224, 224), labels (B,)), for box-guided training also masks, and with
        --finding-loss-weight in training also the finding targets."""
        images, labels, masks, findings, groups, targets = self._unpack(batch)
        if self.config["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        logits, features = self._run_net(images)
        logits = logits[:, 0]  # (B,)
        if groups is not None:  # the worst-group objective over each image's own loss
            each = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="none",
                                                      pos_weight=self.loss.pos_weight)
            loss = self.group_weights(each, groups)
        else:
            loss = self.loss(logits, targets)
        if masks and self.config["box_loss_weight"] > 0:
            cams = class_activation_map(features, self.net.fc.weight)
            guidance = box_guidance_loss(cams, cell_coverage(masks[0], tuple(cams.shape[-2:])))
            self.log("train_box_loss", guidance, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(labels))
            loss = loss + self.config["box_loss_weight"] * guidance
        if findings is not None:
            finding = self._finding_loss(features, findings)
            self.log("train_finding_loss", finding, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=len(labels))
            loss = loss + self._finding_weight() * finding
        return loss, logits, labels

    def training_step(self, batch, batch_idx):
        loss, logits, labels = self._step(batch)
        self.train_acc(torch.sigmoid(logits), labels)
        # Across processes (DDP) only the epoch value is averaged: a per-step all-reduce would cost every step.
        self.log("train_loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=len(labels))
        self.log("train_loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(labels))
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits, labels = self._step(batch)
        probs = torch.sigmoid(logits)
        self.val_acc(probs, labels)
        self.val_auroc(probs, labels)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(labels))
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log("val_auroc", self.val_auroc, on_epoch=True, prog_bar=True, batch_size=len(labels))

    def on_train_epoch_end(self) -> None:
        """The group DRO weights, one column each in the metrics (once an epoch: reading them syncs)."""
        if self.hparams.get("dro_groups"):
            for name, weight in zip(self.hparams["dro_groups"], self.group_weights.q.tolist(), strict=True):
                self.log(f"dro_weight/{name}", weight)

    def configure_optimizers(self):
        cfg = self.config
        optimizer_class = OPTIMIZER_CLASSES[cfg["optimizer"]]
        optimizer = optimizer_class(self.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if cfg["schedule"] == "none":
            return optimizer
        if cfg["schedule"] == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=MONITOR_MODES[cfg["monitor"]],
                                                                   factor=0.5, patience=1)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": cfg["monitor"],
                                                             "interval": "epoch"}}
        if cfg["schedule"] == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg["lr"], total_steps=total)
        else:
            warmup = max(1, int(total * cfg["warmup_fraction"]))
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        if self.config["channels_last"]:
            self.net.to(memory_format=torch.channels_last)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["pneumocam"] = {**self.hparams["metadata"], "normalization": self.hparams["normalization"],
                                   "pos_weight": self.hparams["pos_weight"], "epoch": self.current_epoch}


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
            self.train_set = (BoxedSplit(train, boxes, self.norm, self.config.augment) if boxes is not None else
                              split_dataset(self.data_dir, "train", build_transform(self.norm, self.config.augment)))
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
        """The training images' values of `attributes` (data.sample_groups) and their labels, in sampler order."""
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
        if train and (self.config.finding_loss_weight > 0 or self.config.soft_labels or self.config.group_dro):
            dataset = WithTargets(dataset, *self._training_targets())
        if in_memory:  # one tensor index per batch, no per-image collation
            batches = BatchSampler(sampler, self.config.batch_size, drop_last)
            return DataLoader(dataset, sampler=batches, batch_size=None, pin_memory=torch.cuda.is_available())
        return DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.config.num_workers, persistent_workers=self.config.num_workers > 0)

    def _training_targets(self) -> list[torch.Tensor]:
        """What training batches carry after the images: the finding targets, the group DRO indices."""
        files = self._training_files()[0]
        targets = []
        if self.config.finding_loss_weight > 0:
            findings = finding_targets(self.data_dir, files)
            if (known := int((~torch.isnan(findings)).sum())) == 0:
                raise PneumocamError(f"--finding-loss-weight needs findings: no training image under {self.data_dir} "
                                     "has one in manifest.csv (prepare a source with RSNA's "
                                     "stage_2_detailed_class_info.csv or a finding column in metadata.csv)")
            log.info("--finding-loss-weight: %d of %d training images have a finding, %d of them \"Not Normal\"",
                     known, len(findings), int(findings.nan_to_num(0).sum()))
            targets.append(findings)
        if self.config.soft_labels:
            targets.append(soft_targets(self.config.soft_labels, files, self.config.soft_label_weight))
        if self.config.group_dro:
            targets.append(self.dro_groups()[0])
        return targets

    def dro_groups(self) -> tuple[torch.Tensor, list[str]]:
        """--group-dro: each training image's group index (attribute values x label) and the groups' names."""
        groups, labels = self._training_values(_known_attributes("--group-dro", self.config.group_dro))
        return group_ids(groups, labels)

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


def resolve_pos_weight(setting: str, labels, balanced_sampling: bool = False) -> float:
    """The BCE positive-class weight. "auto" corrects the class imbalance once: n_neg / n_pos, or 1 when
    balanced sampling already draws both classes equally often (both together would over-call pneumonia)."""
    if setting == "auto":
        if balanced_sampling:
            log.warning("--balanced-sampling already corrects the class imbalance: --pos-weight auto means 1 here")
            return 1.0
        return positive_weight(labels)
    try:
        value = float(setting)
    except ValueError as exc:
        raise PneumocamError(f"--pos-weight must be 'auto' or a number, got {setting!r}") from exc
    if value <= 0:
        raise PneumocamError(f"--pos-weight must be positive, got {value}")
    if balanced_sampling and value != 1:
        log.warning("--pos-weight %g with --balanced-sampling corrects the class imbalance twice; probabilities "
                    "will be shifted by log(%g)", value, value)
    return value
