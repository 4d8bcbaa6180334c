"""Training with PyTorch Lightning: a thin LightningModule around PneumoniaNet, a DataModule, and fit().

This is the only module that imports lightning. Checkpoints (RUN/checkpoints/best.ckpt by the monitored
validation metric, and last.ckpt) carry a "pneumocam" entry with the resolved config, normalisation, data
fingerprint and package versions, in plain types so they load with torch.load(weights_only=True).
"""

from __future__ import annotations

import importlib.util
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler, WeightedRandomSampler
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC
from tqdm.contrib.logging import logging_redirect_tqdm

from pneumocam.augment import AUGMENT_RANGES, augment_batch
from pneumocam.cam import class_activation_map
from pneumocam.data import (
    AUGMENTATIONS,
    BoxedSplit,
    InMemorySplit,
    Normalization,
    build_transform,
    data_contract,
    dataset_labels,
    load_split_in_memory,
    positive_weight,
    read_fingerprint,
    read_normalization,
    sample_weights,
    split_boxes,
    split_dataset,
)
from pneumocam.errors import PneumocamError
from pneumocam.files import atomic_path, remove_stale_temporaries, write_json
from pneumocam.guidance import box_guidance_loss, cell_coverage
from pneumocam.model import PneumoniaNet
from pneumocam.provenance import git_commit, package_versions

log = logging.getLogger(__name__)

SCHEDULES = ("cosine", "onecycle", "plateau", "none")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
# metric -> mode for "best.ckpt". val_loss is the default: AUROC alone can peak at an epoch whose
# BatchNorm statistics still lag and whose probabilities are badly calibrated (seen on the phantom set).
MONITORS = {"val_loss": "min", "val_auroc": "max", "val_acc": "max"}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"  # adam | adamw
    schedule: str = "cosine"  # cosine decay after a linear warm-up | onecycle | plateau | none
    warmup_fraction: float = 0.05
    grad_clip: float = 0.0  # clip the gradient norm to this value; 0 = off
    early_stop_patience: int = 0  # stop after this many epochs without improvement of `monitor`; 0 = off
    pos_weight: str = "auto"  # "auto" = n_negative / n_positive of the training split, or a number
    balanced_sampling: bool = False  # draw both classes equally often (with replacement)
    augment: str = "original"  # original | shift | none (data.geometric_transform)
    # > 0: add this times guidance.box_guidance_loss, which steers the CAM into the boxes of the training
    # images that have them (DATA/boxes.csv); 0 = labels only (weakly supervised)
    box_loss_weight: float = 0.0
    pretrained: str = "imagenet"  # imagenet | none | path to a torchvision resnet18 state dict
    # mean/std: None = the data set's own (stats.json) when present, else RSNA's 0.49/0.248;
    # True = stats.json, required; False = RSNA's constants
    data_stats: bool | None = None
    monitor: str = "val_loss"  # validation metric that chooses best.ckpt (see MONITORS)
    seed: int = 0
    num_workers: int = 0
    accelerator: str = "auto"
    devices: str = "auto"
    strategy: str = "auto"  # e.g. ddp for several GPUs or nodes
    num_nodes: int = 1
    precision: str = "auto"  # auto: bf16-mixed (or 16-mixed) on a GPU, 32-true on CPU
    channels_last: bool = True
    in_memory: str = "auto"  # hold the data set in memory and augment on the device; auto: on a GPU
    compile: bool = False  # torch.compile the network
    # auto: deterministic algorithms on CPU (same seed -> same metrics); on a GPU cuDNN autotuning instead,
    # since bit-exact GPU runs cost speed and are rarely what a GPU user wants ("on" forces them)
    deterministic: str = "auto"  # auto | on | off
    resume: bool = False  # continue from RUN/checkpoints/last.ckpt
    fast_dev_run: bool = False


def _on_gpu(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_runtime(config: TrainConfig) -> TrainConfig:
    """Replace the "auto" settings by what they mean on this machine (recorded in the checkpoint)."""
    gpu = _on_gpu(config.accelerator)
    precision = config.precision
    if precision == "auto":
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if gpu else "32-true"
    in_memory = config.in_memory if config.in_memory != "auto" else ("on" if gpu else "off")
    deterministic = config.deterministic if config.deterministic != "auto" else ("off" if gpu else "on")
    return replace(config, precision=precision, in_memory=in_memory, deterministic=deterministic)


def _warmup_cosine(total_steps: int, warmup_steps: int):
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class PneumoniaModule(L.LightningModule):
    """Loss, metrics and optimisation around a PneumoniaNet; the network itself stays a plain nn.Module."""

    def __init__(self, config: dict, pos_weight: float, normalization: dict, metadata: dict,
                 load_pretrained: bool = True):
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
        # kept outside the module tree so the checkpoint's state_dict keys stay those of PneumoniaNet
        object.__setattr__(self, "_run_net", torch.compile(self.net) if config["compile"] else self.net)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net(x)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """In-memory path: batches arrive on the device in [0, 1]; augment them (and their box masks, alike)
        there, then normalise."""
        if self.config["in_memory"] != "on":
            return batch
        images, labels, *masks = batch
        images = images.float()
        augment = self.config["augment"]
        if self.trainer.training and augment != "none":
            both = augment_batch(torch.cat([images, *(m.float() for m in masks)], dim=1), self._augment_generator,
                                 AUGMENT_RANGES[augment])
            images, masks = both[:, :1], [both[:, 1:]] if masks else []
        norm = self.hparams["normalization"]
        return ((images - norm["mean"]) / norm["std"], labels, *masks)

    def _step(self, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batches are (images (B, 1, 224, 224), labels (B,)) or, for box-guided training, also masks."""
        images, labels, *masks = batch
        if self.config["channels_last"]:
            images = images.contiguous(memory_format=torch.channels_last)
        logits, features = self._run_net(images)
        logits = logits[:, 0]  # (B,)
        loss = self.loss(logits, labels.float())
        if masks and self.config["box_loss_weight"] > 0:
            cams = class_activation_map(features, self.net.fc.weight)
            guidance = box_guidance_loss(cams, cell_coverage(masks[0], tuple(cams.shape[-2:])))
            self.log("train_box_loss", guidance, on_step=False, on_epoch=True, sync_dist=True, batch_size=len(labels))
            loss = loss + self.config["box_loss_weight"] * guidance
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

    def configure_optimizers(self):
        cfg = self.config
        optimizer = OPTIMIZERS[cfg["optimizer"]](self.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        total = max(1, int(self.trainer.estimated_stepping_batches))
        if cfg["schedule"] == "none":
            return optimizer
        if cfg["schedule"] == "plateau":
            scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode=MONITORS[cfg["monitor"]],
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
        boxes = split_boxes(train, self.data_dir)
        if not bool((boxes[..., 2:] > 0).all(-1).any()):
            raise PneumocamError(f"--box-loss-weight needs boxes: no training image under {self.data_dir} has one in "
                                 "boxes.csv (prepare an RSNA-layout source, or train with --box-loss-weight 0)")
        return boxes

    def _sampler(self, dataset, train: bool):
        generator = torch.Generator().manual_seed(self.config.seed)
        if train and self.config.balanced_sampling:
            labels = np.asarray(dataset.labels) if hasattr(dataset, "labels") else dataset_labels(dataset)
            return WeightedRandomSampler(sample_weights(labels), len(labels), replacement=True, generator=generator)
        return RandomSampler(dataset, generator=generator) if train else SequentialSampler(dataset)

    def _loader(self, dataset, train: bool) -> DataLoader:
        drop_last = train and len(dataset) > self.config.batch_size  # no BatchNorm on a batch of 1
        sampler = self._sampler(dataset, train)
        if isinstance(dataset, InMemorySplit):  # one tensor index per batch, no per-image collation
            batches = BatchSampler(sampler, self.config.batch_size, drop_last)
            return DataLoader(dataset, sampler=batches, batch_size=None, pin_memory=torch.cuda.is_available())
        return DataLoader(dataset, batch_size=self.config.batch_size, sampler=sampler, drop_last=drop_last,
                          num_workers=self.config.num_workers, persistent_workers=self.config.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their final name and renamed into place (files.atomic_path).

    Lightning's own save stages the file in the system temporary folder; where that is another file
    system (a tmpfs /tmp, common on Linux), its last step is a plain copy into place, and kill -9
    during the copy leaves a truncated last.ckpt that --resume cannot load.
    """

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        with atomic_path(path) as tmp_path:
            torch.save(checkpoint, tmp_path)


class EpochSummary(Callback):
    """One log line per epoch: losses, validation AUROC/accuracy and training throughput."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._seen = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._seen += len(batch[1])

    def on_train_epoch_end(self, trainer, pl_module) -> None:  # runs after the epoch's validation
        m = {k: float(v) for k, v in trainer.callback_metrics.items()}
        rate = self._seen / max(1e-9, time.perf_counter() - self._start)
        where = "" if trainer.world_size == 1 else f" per process (rank {trainer.global_rank} of {trainer.world_size})"
        log.log(_report_level(trainer), "epoch %d: train_loss %.4f  val_loss %.4f  val_auroc %.4f  val_acc %.4f  "
                "%.1f img/s%s", trainer.current_epoch, m.get("train_loss_epoch", float("nan")),
                m.get("val_loss", float("nan")), m.get("val_auroc", float("nan")), m.get("val_acc", float("nan")),
                rate, where)


def _report_level(trainer) -> int:
    """Under DDP every process runs fit() and holds the same averaged metrics: the first one reports
    them, the others only at debug level (-v), instead of one copy of each line per process."""
    return logging.INFO if trainer.is_global_zero else logging.DEBUG


@dataclass(frozen=True)
class FitResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_score: float | None
    is_global_zero: bool = True  # False in the other processes of a DDP run (they return too)


def _devices(value: str):
    """Lightning takes "auto", a count (int) or a list such as "0,1"; the CLI passes strings."""
    return int(value) if str(value).isdigit() else value


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


def _check(config: TrainConfig, run_dir: Path) -> Path | None:
    """Validate the settings; returns the checkpoint to resume from, if any."""
    for value, allowed, flag in ((config.schedule, SCHEDULES, "--schedule"), (config.monitor, MONITORS, "--monitor"),
                                 (config.augment, AUGMENTATIONS, "--augment"),
                                 (config.optimizer, OPTIMIZERS, "--optimizer"),
                                 (config.in_memory, ("auto", "on", "off"), "--in-memory"),
                                 (config.deterministic, ("auto", "on", "off"), "--deterministic")):
        if value not in allowed:
            raise PneumocamError(f"unknown {flag} {value!r}; choose from {sorted(allowed)}")
    if not config.box_loss_weight >= 0:
        raise PneumocamError(f"--box-loss-weight must be >= 0, got {config.box_loss_weight}")
    if not config.resume:
        return None
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise PneumocamError(f"{last}: nothing to resume from (train without --resume first)")
    return last


def _loggers(run_dir: Path, resuming: bool) -> list:
    """CSV always (RUN/logs/metrics.csv), TensorBoard when installed. A resumed run logs to
    RUN/logs/resumed-N/metrics.csv: Lightning's CSV writer rewrites an existing file's header on its
    first save and would drop the columns logged before the interruption."""
    version = ""
    if resuming:
        version = f"resumed-{len(list((run_dir / 'logs').glob('resumed-*'))) + 1}"
    loggers = [CSVLogger(run_dir, name="logs", version=version)]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=version))
    return loggers


def fit(data_dir: str | Path, run_dir: str | Path, config: TrainConfig = TrainConfig()) -> FitResult:
    """Train on DATA/Processed/train, validate on DATA/Processed/val, write checkpoints under RUN.

    With config.resume, continue from RUN/checkpoints/last.ckpt (weights, optimizer, scheduler, epoch).
    """
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    resume_from = _check(config, run_dir)
    config = resolve_runtime(config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    norm = read_normalization(data_dir, config.data_stats)
    labels = dataset_labels(split_dataset(data_dir, "train"))
    pos_weight = resolve_pos_weight(config.pos_weight, labels, config.balanced_sampling)
    metadata = {
        "config": asdict(config), "data_dir": str(data_dir.resolve()), "data_fingerprint": read_fingerprint(data_dir),
        "versions": package_versions(), "git_commit": git_commit(), "threshold": 0.5, "image_size": 224,
        "preprocessing": asdict(data_contract(data_dir)),
    }
    normalization = asdict(norm)
    module = PneumoniaModule(asdict(config), pos_weight, normalization, metadata, load_pretrained=not resume_from)
    run_dir.mkdir(parents=True, exist_ok=True)
    if stale := remove_stale_temporaries(run_dir / "checkpoints"):  # a checkpoint save cut short by kill -9
        log.info("removed %d temporary checkpoint files left by an interrupted run", stale)
    resolved = {**metadata, "normalization": normalization, "pos_weight": pos_weight, "n_train": int(len(labels)),
                "n_train_positive": int(labels.sum()), "resumed_from": str(resume_from) if resume_from else None}
    write_json(run_dir / ("config.resumed.json" if resume_from else "config.json"), resolved)
    datamodule = PneumoniaDataModule(data_dir, norm, config)
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=config.monitor,
                                 mode=MONITORS[config.monitor], auto_insert_metric_name=False,
                                 enable_version_counter=False)
    # Lightning 2.6 refreshes save_last's file only when the monitored checkpoint improves; a separate
    # monitor-less callback keeps last.ckpt at the latest epoch, which is what --resume needs.
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="last", save_top_k=1,
                           enable_version_counter=False)
    # TQDM explicitly: Lightning would switch to a Rich bar whenever `rich` happens to be installed.
    # A GPU step takes milliseconds and each bar refresh reads the loss back from the device.
    bar = TQDMProgressBar(refresh_rate=10 if _on_gpu(config.accelerator) else 1)
    callbacks = [checkpoint, last, LearningRateMonitor("step"), EpochSummary(), bar]
    if config.early_stop_patience > 0:
        callbacks.append(EarlyStopping(config.monitor, patience=config.early_stop_patience,
                                       mode=MONITORS[config.monitor]))
    trainer = L.Trainer(
        max_epochs=config.epochs, accelerator=config.accelerator, devices=_devices(config.devices),
        strategy=config.strategy, num_nodes=config.num_nodes, precision=config.precision,
        deterministic="warn" if config.deterministic == "on" else False,
        benchmark=config.deterministic == "off", fast_dev_run=config.fast_dev_run,
        gradient_clip_val=config.grad_clip or None,
        callbacks=callbacks, logger=_loggers(run_dir, resume_from is not None), log_every_n_steps=5,
        num_sanity_val_steps=0, enable_model_summary=False, default_root_dir=run_dir,
        plugins=[AtomicCheckpointIO()],
    )
    # log lines (the per-epoch summary) go through tqdm.write, so they do not land on the bar's line
    with logging_redirect_tqdm():
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from,
                    weights_only=True if resume_from else None)
    if config.fast_dev_run:  # Lightning skips checkpointing in a dev run; save one so the run is usable
        trainer.save_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else run_dir / "checkpoints" / "last.ckpt"
    score = float(checkpoint.best_model_score) if checkpoint.best_model_score is not None else None
    log.log(_report_level(trainer), "best %s = %s at %s", config.monitor, score, best)
    return FitResult(run_dir, best, run_dir / "checkpoints" / "last.ckpt", score, trainer.is_global_zero)
