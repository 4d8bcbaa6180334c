"""Training with PyTorch Lightning: a thin LightningModule around PneumoniaNet, a DataModule, and fit().

This is the only module that imports lightning. Checkpoints (RUN/checkpoints/best.ckpt by the monitored
validation metric, and last.ckpt) carry a "pneumocam" entry with the resolved config, normalisation, data
fingerprint and package versions, in plain types so they load with torch.load(weights_only=True).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from pneumocam.data import (
    Normalization,
    build_transform,
    dataset_labels,
    positive_weight,
    read_fingerprint,
    read_normalization,
    split_dataset,
)
from pneumocam.errors import PneumocamError
from pneumocam.files import write_json
from pneumocam.model import PneumoniaNet
from pneumocam.provenance import git_commit, package_versions

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "onecycle", "none")
# metric -> mode for "best.ckpt". val_loss is the default: AUROC alone can peak at an epoch whose
# BatchNorm statistics still lag and whose probabilities are badly calibrated (seen on the phantom set).
MONITORS = {"val_loss": "min", "val_auroc": "max", "val_acc": "max"}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # cosine decay after a linear warm-up | onecycle | none
    warmup_fraction: float = 0.05
    pos_weight: str = "auto"  # "auto" = n_negative / n_positive of the training split, or a number
    augment: str = "original"
    pretrained: str = "imagenet"  # imagenet | none | path to a torchvision resnet18 state dict
    data_stats: bool = False  # normalise with the data set's own mean/std (stats.json) instead of RSNA's
    monitor: str = "val_loss"  # validation metric that chooses best.ckpt (see MONITORS)
    seed: int = 0
    num_workers: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    precision: str = "32-true"
    channels_last: bool = True
    fast_dev_run: bool = False


def _warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class PneumoniaModule(L.LightningModule):
    """Loss, metrics and optimisation around a PneumoniaNet; the network itself stays a plain nn.Module."""

    def __init__(self, config: dict, pos_weight: float, normalization: dict, metadata: dict):
        super().__init__()
        self.save_hyperparameters()
        self.config = config
        self.net = PneumoniaNet(config["pretrained"])
        self.loss = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight]))
        self.train_acc = BinaryAccuracy()
        self.val_acc = BinaryAccuracy()
        self.val_auroc = BinaryAUROC()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)

    def _step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        images, labels = batch  # (B, 1, 224, 224), (B,)
        if self.config["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        logits, _ = self.net(images)
        logits = logits[:, 0]  # (B,)
        return self.loss(logits, labels.float()), logits, labels

    def training_step(self, batch, batch_idx):
        loss, logits, labels = self._step(batch)
        self.train_acc(torch.sigmoid(logits), labels)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log("train_acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch, batch_idx):
        loss, logits, labels = self._step(batch)
        probs = torch.sigmoid(logits)
        self.val_acc(probs, labels)
        self.val_auroc(probs, labels)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log("val_auroc", self.val_auroc, on_epoch=True, prog_bar=True, batch_size=len(labels))

    def configure_optimizers(self):
        cfg = self.config
        optimizer = torch.optim.Adam(self.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if cfg["schedule"] == "none":
            return optimizer
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
    """Train/val loaders over DATA/Processed; augmentation only on the training split."""

    def __init__(self, data_dir: str | Path, norm: Normalization, batch_size: int, augment: str, num_workers: int):
        super().__init__()
        self.data_dir, self.norm = Path(data_dir), norm
        self.batch_size, self.augment, self.num_workers = batch_size, augment, num_workers

    def setup(self, stage: str | None = None) -> None:
        self.train_set = split_dataset(self.data_dir, "train", build_transform(self.norm, self.augment))
        self.val_set = split_dataset(self.data_dir, "val", build_transform(self.norm, "none"))

    def _loader(self, dataset, shuffle: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          drop_last=shuffle and len(dataset) > self.batch_size,  # no BatchNorm on a batch of 1
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)


class EpochSummary(Callback):
    """One log line per epoch: losses, validation AUROC/accuracy and training throughput."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._seen = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._seen += len(batch[1])

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # runs after the epoch's validation
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        rate = self._seen / max(1e-9, time.perf_counter() - self._start)
        log.info("epoch %d: train_loss %.4f  val_loss %.4f  val_auroc %.4f  val_acc %.4f  %.1f img/s",
                 trainer.current_epoch, m.get("train_loss_epoch", float("nan")), m.get("val_loss", float("nan")),
                 m.get("val_auroc", float("nan")), m.get("val_acc", float("nan")), rate)


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_score: float | None


def resolve_pos_weight(setting: str, labels) -> float:
    if setting == "auto":
        return positive_weight(labels)
    try:
        value = float(setting)
    except ValueError as exc:
        raise PneumocamError(f"--pos-weight must be 'auto' or a number, got {setting!r}") from exc
    if value <= 0:
        raise PneumocamError(f"--pos-weight must be positive, got {value}")
    return value


def fit(data_dir: str | Path, run_dir: str | Path, config: TrainConfig = TrainConfig()) -> FitResult:
    """Train on DATA/Processed/train, validate on DATA/Processed/val, write checkpoints under RUN."""
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    if config.schedule not in SCHEDULES:
        raise PneumocamError(f"unknown --schedule {config.schedule!r}; choose from {SCHEDULES}")
    if config.monitor not in MONITORS:
        raise PneumocamError(f"unknown --monitor {config.monitor!r}; choose from {sorted(MONITORS)}")
    L.seed_everything(config.seed, workers=True, verbose=False)
    norm = read_normalization(data_dir, config.data_stats)
    labels = dataset_labels(split_dataset(data_dir, "train"))
    pos_weight = resolve_pos_weight(config.pos_weight, labels)
    metadata = {
        "config": asdict(config), "data_dir": str(data_dir.resolve()), "data_fingerprint": read_fingerprint(data_dir),
        "versions": package_versions(), "git_commit": git_commit(), "threshold": 0.5, "image_size": 224,
    }
    normalization = asdict(norm)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", {**metadata, "normalization": normalization, "pos_weight": pos_weight,
                                          "n_train": int(len(labels)), "n_train_positive": int(labels.sum())})
    module = PneumoniaModule(asdict(config), pos_weight, normalization, metadata)
    datamodule = PneumoniaDataModule(data_dir, norm, config.batch_size, config.augment, config.num_workers)
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=config.monitor,
                                 mode=MONITORS[config.monitor], auto_insert_metric_name=False,
                                 enable_version_counter=False)
    # Lightning 2.6 refreshes save_last's file only when the monitored checkpoint improves; a separate
    # monitor-less callback keeps last.ckpt at the latest epoch, which is what --resume needs.
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", save_top_k=1,
                           enable_version_counter=False)
    trainer = L.Trainer(
        max_epochs=config.epochs, accelerator=config.accelerator, devices=config.devices,
        precision=config.precision, deterministic="warn", fast_dev_run=config.fast_dev_run,
        callbacks=[checkpoint, last, LearningRateMonitor("step"), EpochSummary()],
        logger=CSVLogger(run_dir, name="logs", version=""), log_every_n_steps=5,
        num_sanity_val_steps=0, enable_model_summary=False, default_root_dir=run_dir,
    )
    trainer.fit(module, datamodule=datamodule)
    if config.fast_dev_run:  # Lightning skips checkpointing in a dev run; save one so the run is usable
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else run_dir / "checkpoints" / "last.ckpt"
    score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
    log.info("best %s = %s at %s", config.monitor, score, best)
    return FitResult(run_dir, best, run_dir / "checkpoints" / "last.ckpt", score)
