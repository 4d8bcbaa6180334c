import json

import pytest
import torch

from pneumocam.commands.export import export_model
from pneumocam.config import ExportConfig
from pneumocam.errors import PneumocamError


@pytest.mark.parametrize("fmt", ["onnx", pytest.param("torchscript", marks=pytest.mark.slow)])
def test_export_parity(tiny_checkpoint, phantom_data, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="ONNX export needs pneumocam[export]")
    out = tmp_path / f"model.{fmt}"
    report = export_model(tiny_checkpoint, out, ExportConfig(fmt))
    assert report["parity_passed"] and report["max_abs_diff_logit"] <= 1e-4
    assert report["max_abs_diff_feature_map"] <= 1e-4
    description = json.loads((tmp_path / f"model.{fmt}.json").read_text())
    stats = json.loads((phantom_data / "stats.json").read_text())
    assert description["normalization"]["mean"] == stats["mean"] and len(description["fc_weight"]) == 512
    if fmt == "torchscript":  # the exported model gives CAM too: mean(w . A) + b == logit
        module = torch.jit.load(str(out))
        logit, features = module(torch.randn(1, 1, 224, 224))
        w = torch.tensor(description["fc_weight"])
        cam = torch.einsum("c,chw->hw", w, features[0].detach())
        assert float(cam.mean()) + description["fc_bias"] == pytest.approx(float(logit), abs=1e-4)


@pytest.mark.slow
def test_failed_parity_writes_nothing(tiny_checkpoint, tmp_path):
    with pytest.raises(PneumocamError, match="differs from PyTorch"):
        export_model(tiny_checkpoint, tmp_path / "m.pt", ExportConfig("torchscript", tolerance=-1.0))
    assert list(tmp_path.iterdir()) == []
