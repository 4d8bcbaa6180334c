"""The train step: a Lightning Trainer on prepared data, checkpoints and the run's resolved settings under RUN.

Checkpoints (RUN/checkpoints/best.ckpt by the monitored validation metric, and last.ckpt) carry a "pneumocam"
entry with the resolved config, normalisation, data fingerprint and package versions, in plain types so they
load with torch.load(weights_only=True). RUN/config.yaml holds the settings in the form --config reads.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from tqdm.contrib.logging import logging_redirect_tqdm

from pneumocam.config import AUGMENTATIONS, AUTO_ON_OFF, MONITORS, OPTIMIZERS, SCHEDULES, TrainConfig, write_yaml
from pneumocam.data import data_contract, dataset_labels, read_fingerprint, read_normalization, split_dataset
from pneumocam.errors import PneumocamError
from pneumocam.files import remove_stale_temporaries, write_json
from pneumocam.provenance import git_commit, package_versions
from pneumocam.training import (
    MONITOR_MODES,
    AtomicCheckpointIO,
    EpochSummary,
    PneumoniaDataModule,
    PneumoniaModule,
    report_level,
    resolve_pos_weight,
)

log = logging.getLogger(__name__)


def _on_gpu(accelerator: str) -> bool:
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _cpu_has_bfloat16() -> bool:
    """Native bfloat16 instructions (AVX512-BF16 or AMX): without them bf16-mixed runs emulated on a CPU."""
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check() for check in checks if check is not None)


def resolve_runtime(config: TrainConfig) -> TrainConfig:
    """Replace the "auto" settings by what they mean on this machine (recorded in the checkpoint)."""
    gpu = _on_gpu(config.accelerator)
    precision = config.precision
    if precision == "auto":
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if gpu else "32-true"
    in_memory = config.in_memory if config.in_memory != "auto" else ("on" if gpu else "off")
    deterministic = config.deterministic if config.deterministic != "auto" else ("off" if gpu else "on")
    return replace(config, precision=precision, in_memory=in_memory, deterministic=deterministic)


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


def _check(config: TrainConfig, run_dir: Path) -> Path | None:
    """Validate the settings; returns the checkpoint to resume from, if any."""
    for value, allowed, flag in ((config.schedule, SCHEDULES, "--schedule"), (config.monitor, MONITORS, "--monitor"),
                                 (config.augment, AUGMENTATIONS, "--augment"),
                                 (config.optimizer, OPTIMIZERS, "--optimizer"),
                                 (config.in_memory, AUTO_ON_OFF, "--in-memory"),
                                 (config.deterministic, AUTO_ON_OFF, "--deterministic")):
        if value not in allowed:
            raise PneumocamError(f"unknown {flag} {value!r}; choose from {sorted(allowed)}")
    for weight, flag in ((config.box_loss_weight, "--box-loss-weight"),
                         (config.finding_loss_weight, "--finding-loss-weight"),
                         (config.view_adversary, "--view-adversary"), (config.mixup, "--mixup"),
                         (config.sam, "--sam"), (config.anchor_weight, "--anchor-weight"),
                         (config.rank_weight, "--rank-weight")):
        if not weight >= 0:
            raise PneumocamError(f"{flag} must be >= 0 (0: off), got {weight}")
    if not config.rank_hard_weight >= 0 or (config.rank_hard_weight != 1 and not config.rank_weight > 0):
        raise PneumocamError(f"--rank-hard-weight weighs --rank-weight's pairs: it needs --rank-weight > 0 and must "
                             f"be >= 0 (1: off), got {config.rank_hard_weight}")
    if not 0 <= config.soft_label_weight <= 1:
        raise PneumocamError(f"--soft-label-weight must be in [0, 1], got {config.soft_label_weight}")
    if config.soft_labels and not Path(config.soft_labels).is_file():
        raise PneumocamError(f"--soft-labels {config.soft_labels}: no such file")
    if not 0 <= config.ema_decay < 1:
        raise PneumocamError(f"--ema-decay must be in [0, 1) (0: off), got {config.ema_decay}")
    if config.mixup > 0 and (config.group_dro or config.view_adversary > 0 or config.rank_weight > 0):
        raise PneumocamError("--mixup blends films of different groups and views: it cannot be combined with "
                             "--group-dro, --view-adversary or --rank-weight")
    if config.sam > 0 and (config.mixup > 0 or config.group_dro):
        raise PneumocamError("--sam evaluates each batch twice; --mixup would blend it differently and --group-dro "
                             "update its weights twice: it cannot be combined with either")
    if config.freeze_stages not in range(5):
        raise PneumocamError(f"--freeze-stages must be 0-4 (residual stages kept fixed), got {config.freeze_stages}")
    for on, flag in ((config.freeze_batchnorm, "--freeze-batchnorm"), (config.anchor_weight > 0, "--anchor-weight"),
                     (config.freeze_stages > 0, "--freeze-stages")):
        if on and config.pretrained == "none":
            raise PneumocamError(f"{flag} keeps what a trained model knew: give --pretrained")
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


def _callbacks(run_dir: Path, config: TrainConfig) -> tuple[ModelCheckpoint, list]:
    """best.ckpt by the monitored metric, last.ckpt every epoch, the learning rate, a line per epoch, the bar."""
    checkpoint = ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor=config.monitor,
                                 mode=MONITOR_MODES[config.monitor], auto_insert_metric_name=False,
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
                                       mode=MONITOR_MODES[config.monitor]))
    if config.ema_decay > 0:  # Lightning validates, saves and ends with the average (BatchNorm statistics too)
        callbacks.append(EMAWeightAveraging(decay=config.ema_decay))
    return checkpoint, callbacks


def _dro_groups(datamodule: PneumoniaDataModule) -> list[str]:
    """--group-dro's groups, logged with their sizes: a group of a few images gets a noisy loss."""
    ids, names = datamodule.dro_groups()
    log.info("--group-dro %s: %s", ",".join(datamodule.config.group_dro),
             ", ".join(f"{name} {int((ids == i).sum())} images" for i, name in enumerate(names)))
    return names


def fit(data_dir: str | Path, run_dir: str | Path, config: TrainConfig = TrainConfig()) -> FitResult:
    """Train on DATA/Processed/train, validate on DATA/Processed/val, write checkpoints under RUN.

    With config.resume, continue from RUN/checkpoints/last.ckpt (weights, optimizer, scheduler, epoch).
    """
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    resume_from = _check(config, run_dir)
    given, config = config, resolve_runtime(config)
    if config.precision.startswith("bf16") and not _on_gpu(config.accelerator) and not _cpu_has_bfloat16():
        log.warning("--precision %s on a CPU without native bfloat16 (AVX512-BF16 or AMX): it runs emulated and can "
                    "be slower than 32-true", config.precision)
    L.seed_everything(config.seed, workers=True, verbose=False)
    norm = read_normalization(data_dir, config.data_stats)
    labels = dataset_labels(split_dataset(data_dir, "train"))
    contract = data_contract(data_dir)
    pos_weight = resolve_pos_weight(config.pos_weight, labels, config.balanced_sampling)
    metadata = {
        "config": asdict(config), "data_dir": str(data_dir.resolve()), "data_fingerprint": read_fingerprint(data_dir),
        "versions": package_versions(), "git_commit": git_commit(), "threshold": 0.5,
        "image_size": contract.image_size, "preprocessing": asdict(contract),
    }
    normalization = asdict(norm)
    datamodule = PneumoniaDataModule(data_dir, norm, config)
    dro_groups = _dro_groups(datamodule) if config.group_dro else None
    module = PneumoniaModule(asdict(config), pos_weight, normalization, metadata, load_pretrained=not resume_from,
                             dro_groups=dro_groups)
    run_dir.mkdir(parents=True, exist_ok=True)
    if stale := remove_stale_temporaries(run_dir / "checkpoints"):  # a checkpoint save cut short by kill -9
        log.info("removed %d temporary checkpoint files left by an interrupted run", stale)
    resolved = {**metadata, "normalization": normalization, "pos_weight": pos_weight, "n_train": int(len(labels)),
                "n_train_positive": int(labels.sum()), "resumed_from": str(resume_from) if resume_from else None}
    write_json(run_dir / ("config.resumed.json" if resume_from else "config.json"), resolved)
    write_yaml(run_dir / ("config.resumed.yaml" if resume_from else "config.yaml"), given, "train")
    checkpoint, callbacks = _callbacks(run_dir, config)
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
    log.log(report_level(trainer), "best %s = %s at %s", config.monitor, score, best)
    return FitResult(run_dir, best, run_dir / "checkpoints" / "last.ckpt", score, trainer.is_global_zero)
