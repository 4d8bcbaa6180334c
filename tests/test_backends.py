import numpy as np
import pytest
import torch

from pneumocam.deploy import Predictor
from pneumocam.deploy.backends import BACKENDS, make_runner
from pneumocam.errors import PneumocamError

TOLERANCE = 1e-4  # the parity bound, for the logit and for the CAM


def _images(n: int = 5) -> list[np.ndarray]:
    """Gray X-ray-like images: a bright frame, two darker lung fields, noise."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:224, 0:224] / 224
    base = 0.75 - 0.45 * (np.exp(-((xx - 0.3) ** 2 + (yy - 0.5) ** 2) / 0.02)
                          + np.exp(-((xx - 0.7) ** 2 + (yy - 0.5) ** 2) / 0.02))
    return [np.clip(base + rng.normal(0, 0.05, base.shape), 0, 1).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def eager():
    return Predictor.from_checkpoint("pneumocam-cxr")


@pytest.mark.slow
@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "torch" and not b.endswith("-int8")])
def test_backend_matches_eager_torch_in_logit_and_cam(eager, backend):
    pytest.importorskip(backend, reason=f"the {backend} backend needs pneumocam[fast]")
    fast = Predictor.from_checkpoint("pneumocam-cxr", backend=backend)
    images = _images()
    for batch in (1, 5):  # the batch axis is dynamic
        reference, result = eager.forward(images[:batch]), fast.forward(images[:batch])
        for name in ("logits", "raw", "maps"):  # the logit, the raw 7x7 CAM, the 224-px CAM
            ref, got = getattr(reference, name), getattr(result, name)
            assert np.abs(ref - got).max() <= TOLERANCE, (backend, batch, name, np.abs(ref - got).max())
    ref, got = eager.predict_arrays(images), fast.predict_arrays(images)
    assert [p.predicted for p in ref] == [p.predicted for p in got]
    assert np.allclose([p.ood_distance for p in ref], [p.ood_distance for p in got], atol=1e-2)


def test_unknown_backend_and_gpu_with_a_cpu_backend_are_refused():
    net = torch.nn.Identity()
    with pytest.raises(PneumocamError, match="unknown backend"):
        make_runner(net, "tensorrt")
    with pytest.raises(PneumocamError, match="runs on the CPU"):
        make_runner(net, "onnxruntime", torch.device("cuda"))


def test_torch_backend_runs_the_network_itself(eager):
    x = np.stack(_images(2))[:, None].astype(np.float32)
    logits, features = eager.run(x)
    with torch.no_grad():
        expected = eager.net(torch.from_numpy(x))
    assert np.array_equal(logits, expected[0].numpy()) and np.array_equal(features, expected[1].numpy())


def test_auto_is_onnxruntime_on_the_cpu_where_installed_else_torch(monkeypatch):
    import importlib.util

    from pneumocam.deploy import resolve_backend

    installed = importlib.util.find_spec("onnxruntime") is not None
    assert resolve_backend("auto") == ("onnxruntime" if installed else "torch")
    assert resolve_backend("auto", "cuda") == "torch" and resolve_backend("openvino") == "openvino"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert resolve_backend("auto") == "torch"
    with pytest.raises(PneumocamError, match="unknown backend 'tensorrt'; choose from auto, torch"):
        resolve_backend("tensorrt")
