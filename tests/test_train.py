import json

import torch

from pneumocam.data import positive_weight
from pneumocam.train import TrainConfig, fit


def test_fast_dev_run_checkpoint_loads_with_weights_only(tiny_checkpoint):
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)
    meta = checkpoint["pneumocam"]
    assert meta["config"]["pretrained"] == "none"
    assert meta["normalization"]["mean"] == 0.49 and meta["normalization"]["std"] == 0.248
    assert len(meta["data_fingerprint"]) == 64
    assert meta["versions"]["torch"] == torch.__version__.split("+")[0] or meta["versions"]["torch"]
    assert any(k.startswith("net.feature_map.") for k in checkpoint["state_dict"])
    config = json.loads((tiny_checkpoint.parents[1] / "config.json").read_text())
    assert config["pos_weight"] > 0 and config["n_train"] == 18


def test_positive_weight_is_negatives_over_positives():
    import numpy as np

    assert positive_weight(np.array([0, 0, 0, 1])) == 3.0
    assert positive_weight(np.array([0] * 78 + [1] * 22)) == 78 / 22


def test_two_epoch_fit_writes_best_last_and_logs(phantom_data, tmp_path):
    result = fit(phantom_data, tmp_path, TrainConfig(epochs=2, batch_size=6, pretrained="none", augment="none",
                                                     data_stats=True, seed=1))
    assert result.best_checkpoint.name == "best.ckpt" and result.best_checkpoint.exists()
    assert result.last_checkpoint.exists()
    lines = (tmp_path / "logs" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert {"val_auroc", "val_loss", "val_acc", "train_loss_epoch"} <= set(header)
    epochs = {row.split(",")[header.index("epoch")] for row in lines[1:]}
    assert {"0", "1"} <= epochs
    last = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert last["pneumocam"]["normalization"]["origin"].endswith("stats.json")
    assert last["epoch"] == 1
