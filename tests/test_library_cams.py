"""The pytorch-grad-cam bridge (pneumocam[cam-extra]) against pneumocam's own pure Grad-CAM."""

import pytest
import torch

from pneumocam.errors import PneumocamError
from pneumocam.explain import grad_cam, grad_cam_plus_plus, upsample_and_normalize
from pneumocam.model import PneumoniaNet

pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam not installed (pip install 'pneumocam[cam-extra]')")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(1)
    model = PneumoniaNet("none").eval()
    torch.nn.init.normal_(model.fc.weight, std=0.5)
    return model


def test_library_gradcam_matches_pure_gradcam(net):
    from pneumocam.explain import library_saliency

    x = torch.randn(2, 1, 224, 224)
    logit, features = net(x)
    # pytorch-grad-cam resizes like cv2 (cells at block centres)
    ours = upsample_and_normalize(grad_cam(features, logit).detach(), alignment="block-centre")
    theirs = library_saliency(net, x, "gradcam-lib")
    assert theirs.shape == (2, 224, 224)
    assert torch.allclose(ours, theirs, atol=2e-2)
    assert float((ours - theirs).abs().mean()) < 2e-3


def test_library_gradcam_plus_plus_matches_ours_on_the_single_logit(net):
    from pneumocam.explain import library_saliency

    x = torch.randn(2, 1, 224, 224)
    logit, features = net(x)
    ours = upsample_and_normalize(grad_cam_plus_plus(features, logit[:, 0]).detach(), alignment="block-centre")
    theirs = library_saliency(net, x, "gradcam++-lib")
    assert torch.allclose(ours, theirs, atol=2e-2)
    assert float((ours - theirs).abs().mean()) < 2e-3


@pytest.mark.parametrize("method", ["eigencam", "layercam"])
def test_other_library_methods_give_unit_range_maps(net, method):
    from pneumocam.explain import library_saliency

    maps = library_saliency(net, torch.randn(2, 1, 224, 224), method)
    assert maps.shape == (2, 224, 224) and maps.min() >= 0 and maps.max() <= 1 + 1e-6


def test_unknown_library_method(net):
    from pneumocam.explain import library_saliency

    with pytest.raises(PneumocamError, match="unknown library CAM method"):
        library_saliency(net, torch.randn(1, 1, 224, 224), "nope")
