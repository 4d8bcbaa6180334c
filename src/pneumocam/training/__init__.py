"""Training with Lightning: the LightningModule (losses, metrics, optimisation), the data module (splits,
samplers, per-image targets), box guidance, group DRO, mixup, the view adversary, the ranking within strata,
sharpness-aware steps, and the Trainer's checkpoint plugin and epoch callback.
"""

from pneumocam.exports import lazy_exports

_HOMES = {  # public name -> the module of this package that holds it
    "HEAD_LR_FACTOR": "adversary", "ViewAdversary": "adversary",
    "PneumoniaDataModule": "datamodule",
    "DRO_STEP": "group_dro", "GroupWeights": "group_dro", "group_ids": "group_dro",
    "box_guidance_loss": "guidance",
    "mix_batch": "mixup", "known_bce": "losses",
    "hard_pairs": "ranking", "within_stratum_ranking": "ranking",
    "batchnorm_statistics_kept": "sharpness", "climb": "sharpness", "descend_back": "sharpness",
    "sharpness_aware": "sharpness",
    "AtomicCheckpointIO": "hooks", "EpochSummary": "hooks", "report_level": "hooks",
    "Batch": "module", "MONITOR_MODES": "module", "OPTIMIZER_CLASSES": "module", "PneumoniaModule": "module",
    "resolve_pos_weight": "module",
}
__all__ = sorted(_HOMES)
__getattr__ = lazy_exports(__name__, _HOMES)
