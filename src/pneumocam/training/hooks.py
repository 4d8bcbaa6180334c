"""What the Trainer of `pneumocam train` is given besides the LightningModule: checkpoint writes that are
atomic, and one log line per epoch."""

from __future__ import annotations

import logging
import time

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins import TorchCheckpointIO

from pneumocam.files import atomic_path

log = logging.getLogger(__name__)


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
        log.log(report_level(trainer), "epoch %d: train_loss %.4f  val_loss %.4f  val_auroc %.4f  val_acc %.4f  "
                "%.1f img/s%s", trainer.current_epoch, m.get("train_loss_epoch", float("nan")),
                m.get("val_loss", float("nan")), m.get("val_auroc", float("nan")), m.get("val_acc", float("nan")),
                rate, where)


def report_level(trainer) -> int:
    """Under DDP every process runs fit() and holds the same averaged metrics: the first one reports
    them, the others only at debug level (-v), instead of one copy of each line per process."""
    return logging.INFO if trainer.is_global_zero else logging.DEBUG
