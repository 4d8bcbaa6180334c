"""The LightningModule of `pneumocam train`: a thin wrapper around PneumoniaNet with the losses (labels, box
guidance, the finding head, group DRO, soft labels, mixup, the view adversary, the ranking within strata),
metrics and optimisation (with sharpness-aware steps under --sam).

The train step (commands/train.py) puts it into a Trainer with the data module (training.datamodule) and the
plugin and callback of training.hooks; only the training package and that step import lightning.
"""

from __future__ import annotations

import logging
import math
from typing import NamedTuple

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from pneumocam.data.augment import AUGMENT_RANGES, augment_batch, geometry_of, jitter_intensity, varies_intensity
from pneumocam.data.boxes import cell_coverage
from pneumocam.data.datasets import (
    positive_weight,
)
from pneumocam.errors import PneumocamError
from pneumocam.explain.cam import class_activation_map
from pneumocam.model.network import FEATURE_CHANNELS, PneumoniaNet
from pneumocam.training.adversary import HEAD_LR_FACTOR, ViewAdversary
from pneumocam.training.group_dro import GroupWeights
from pneumocam.training.guidance import box_guidance_loss
from pneumocam.training.losses import known_bce
from pneumocam.training.mixup import mix_batch
from pneumocam.training.ranking import hard_pairs, within_stratum_ranking
from pneumocam.training.sharpness import sharpness_aware

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
    views: torch.Tensor | None = None
    strata: torch.Tensor | None = None


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
        self._mixup_generator = np.random.default_rng(config["seed"])  # --mixup's shares and partners
        if self._finding_weight() > 0:  # training only: checkpoints.network_state keeps the "net." entries
            self.finding_head = nn.Linear(FEATURE_CHANNELS, 1)
        if self._adversary_strength() > 0:  # training only, like the finding head
            self.view_adversary = ViewAdversary(FEATURE_CHANNELS)
        if dro_groups:  # --group-dro: the groups' names (hparams) and their weights (a buffer, resumed with the run)
            self.group_weights = GroupWeights(len(dro_groups))
        if self._anchor_weight() > 0:  # --anchor-weight: the starting weights, saved so that a resumed run keeps them
            for i, parameter in enumerate(self.net.parameters()):
                self.register_buffer(f"anchor_{i}", parameter.detach().clone())
        for layer in self._frozen_layers():
            layer.requires_grad_(False)
        self._at_worst_point = False  # --sam's second pass: nothing is logged or counted in the metrics
        # kept outside the module tree so the checkpoint's state_dict keys stay those of PneumoniaNet
        object.__setattr__(self, "_run_net", torch.compile(self.net) if config["compile"] else self.net)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self._keep_frozen_layers_in_eval()
        return self

    def _keep_frozen_layers_in_eval(self) -> None:
        """--freeze-batchnorm: the BatchNorm layers stay in eval mode while the rest trains, so they normalise
        with the running statistics of the model training started from; their scale and shift still learn.
        --freeze-stages: the fixed stages' layers stay in eval mode too. Lightning leaves the modes as it finds
        them at fit start (and restores them after validation)."""
        if getattr(self, "config", {}).get("freeze_batchnorm"):
            for layer in self.net.modules():
                if isinstance(layer, nn.BatchNorm2d):
                    layer.eval()
        for layer in self._frozen_layers():
            layer.eval()

    def _frozen_layers(self) -> list[nn.Module]:
        """--freeze-stages N: the stem (conv1, bn1, relu, maxpool) and the first N residual stages."""
        stages = int(getattr(self, "config", {}).get("freeze_stages", 0))  # absent from runs made before the option
        return list(self.net.feature_map[:4 + stages]) if stages else []

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
        if self.trainer.training and varies_intensity(augment):
            images = jitter_intensity(images, self._augment_generator)
        if self.trainer.training and augment != "none":
            both = augment_batch(torch.cat([images, *(m.float() for m in masks)], dim=1), self._augment_generator,
                                 AUGMENT_RANGES[geometry_of(augment)])
            images, masks = both[:, :1], [both[:, 1:]] if masks else []
        norm = self.hparams["normalization"]
        return ((images - norm["mean"]) / norm["std"], labels, *masks, *targets)

    def _target_count(self) -> int:
        """How many per-image targets training batches carry after the images, labels and box masks."""
        on = (self._carries_findings(), self.config.get("soft_labels"), self.hparams.get("dro_groups"),
              self._adversary_strength() > 0, self._rank_weight() > 0)
        return sum(map(bool, on)) if self.trainer.training else 0

    def _anchor_weight(self) -> float:
        return float(self.config.get("anchor_weight", 0.0))

    def _anchor_loss(self) -> torch.Tensor:
        """L2-SP: half the squared distance of the network's weights to those training started from."""
        return 0.5 * sum(((p - getattr(self, f"anchor_{i}")) ** 2).sum() for i, p in enumerate(self.net.parameters()))

    def _finding_weight(self) -> float:
        return float(self.config.get("finding_loss_weight", 0.0))  # absent from runs made before the option

    def _adversary_strength(self) -> float:
        return float(self.config.get("view_adversary", 0.0))  # absent from runs made before the option

    def _rank_weight(self) -> float:
        return float(self.config.get("rank_weight", 0.0))  # absent from runs made before the option

    def _rank_hard_weight(self) -> float:
        return float(self.config.get("rank_hard_weight", 1.0))  # absent from runs made before the option

    def _carries_findings(self) -> bool:
        """The finding head learns the findings; --rank-hard-weight weighs the ranking's pairs by them."""
        return self._finding_weight() > 0 or hard_pairs(self._rank_weight(), self._rank_hard_weight())

    def _unpack(self, batch) -> Batch:
        """Training batches carry the findings, the teacher's soft labels, the group indices, the views and the
        ranking strata last (data.datasets.WithTargets) when those are on; validation batches never do."""
        images, labels, *rest = batch
        training = self.trainer.training
        strata = rest.pop() if self._rank_weight() > 0 and training else None
        views = rest.pop() if self._adversary_strength() > 0 and training else None
        groups = rest.pop() if self.hparams.get("dro_groups") and training else None
        targets = labels.float()
        if self.config.get("soft_labels") and training:  # NaN: an image the teacher does not name keeps its label
            soft, weight = rest.pop(), float(self.config["soft_label_weight"])
            targets = torch.where(torch.isnan(soft), targets, (1 - weight) * targets + weight * soft)
        findings = rest.pop() if self._carries_findings() and training else None
        return Batch(images, labels, rest, findings, groups, targets, views, strata)

    def _mixed(self, batch: Batch) -> Batch:
        """--mixup A: a training batch blended with itself in a shuffled order, the share drawn from Beta(A, A)
        on the host (no wait for the device); validation batches stay as they are."""
        alpha = float(self.config.get("mixup", 0.0))  # absent from runs made before the option
        if alpha <= 0 or not self.trainer.training:
            return batch
        share = float(self._mixup_generator.beta(alpha, alpha))
        partner = torch.from_numpy(self._mixup_generator.permutation(len(batch.labels))).to(batch.labels.device)
        return mix_batch(batch, share, partner)

    def _finding_loss(self, features: torch.Tensor, findings: torch.Tensor) -> torch.Tensor:
        """BCE of the auxiliary "Not Normal" output over the images whose finding is known (NaN: unknown)."""
        return known_bce(self.finding_head(torch.flatten(self.net.pool(features), 1))[:, 0], findings)

    def _step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batches are (images (B, 1, 224, 224), labels (B,)), for box-guided training also masks, and in training
        the per-image targets the options ask for (_unpack)."""
        images, labels, masks, findings, groups, targets, views, strata = self._mixed(self._unpack(batch))
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
        if findings is not None and self._finding_weight() > 0:
            finding = self._finding_loss(features, findings)
            self.log("train_finding_loss", finding, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=len(labels))
            loss = loss + self._finding_weight() * finding
        if views is not None:  # the head's loss at weight 1 (its lr is higher); W: how hard the network hides the view
            own, confusion = self.view_adversary.losses(torch.flatten(self.net.pool(features), 1), labels, views)
            self.log("train_view_adversary_loss", own, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=len(labels))
            loss = loss + own + self._adversary_strength() * confusion
        if strata is not None:
            hard = None  # every pair alike unless --rank-hard-weight weighs the "Not Normal" films' pairs
            if hard_pairs(self._rank_weight(), self._rank_hard_weight()):
                hard = 1 + (self._rank_hard_weight() - 1) * (findings == 1)
            ranking = within_stratum_ranking(logits, labels, strata, hard)
            self.log("train_rank_loss", ranking, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(labels))
            loss = loss + self._rank_weight() * ranking
        if self._anchor_weight() > 0 and self.trainer.training:
            anchor = self._anchor_loss()
            self.log("train_anchor_loss", anchor, on_step=False, on_epoch=True, sync_dist=True,
                     batch_size=len(labels))
            loss = loss + self._anchor_weight() * anchor
        return loss, logits, labels

    def log(self, *args, **kwargs) -> None:
        """As Lightning's, except in the second pass of a sharpness-aware step (the training curves stay those of
        the weights themselves)."""
        if not self._at_worst_point:
            super().log(*args, **kwargs)

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        """--sam RHO: the step descends the gradient of the worst point within RHO (training.sharpness)."""
        rho = float(self.config.get("sam", 0.0))  # absent from runs made before the option
        if rho <= 0:
            optimizer.step(closure=optimizer_closure)
            return

        def at_worst_point():
            self._at_worst_point = True
            try:
                return optimizer_closure()
            finally:
                self._at_worst_point = False

        optimizer.step(closure=sharpness_aware(optimizer_closure, at_worst_point, self, rho))

    def training_step(self, batch, batch_idx):
        loss, logits, labels = self._step(batch)
        if self._at_worst_point:
            return loss
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
        trainable = [p for p in self.parameters() if p.requires_grad]  # --freeze-stages leaves some out
        groups = [{"params": trainable}]
        if self._adversary_strength() > 0:  # the view adversary's head learns faster (its own group)
            head = {id(p) for p in self.view_adversary.parameters()}
            groups = [{"params": [p for p in trainable if id(p) not in head]},
                      {"params": list(self.view_adversary.parameters()), "lr": cfg["lr"] * HEAD_LR_FACTOR}]
        optimizer = optimizer_class(groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if cfg["schedule"] == "none":
            return optimizer
        if cfg["schedule"] == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=MONITOR_MODES[cfg["monitor"]],
                                                                   factor=0.5, patience=1)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": cfg["monitor"],
                                                             "interval": "epoch"}}
        if cfg["schedule"] == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                            total_steps=total)
        else:
            warmup = max(1, int(total * cfg["warmup_fraction"]))
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(total, warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_start(self) -> None:
        self._keep_frozen_layers_in_eval()
        if self.config["channels_last"]:
            self.net.to(memory_format=torch.channels_last)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["pneumocam"] = {**self.hparams["metadata"], "normalization": self.hparams["normalization"],
                                   "pos_weight": self.hparams["pos_weight"], "epoch": self.current_epoch}


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
