import urllib.error

import pytest
import torch
from torchvision.models import ResNet18_Weights, resnet18

from pneumocam.model import PneumoniaNet, PretrainedWeightsError, adapt_input_conv


def test_forward_returns_logit_and_feature_map():
    net = PneumoniaNet("none").eval()
    with torch.no_grad():
        logit, features = net(torch.randn(3, 1, 224, 224))
    assert logit.shape == (3, 1)
    assert features.shape == (3, 512, 7, 7)
    assert net.conv1.in_channels == 1 and net.fc.out_features == 1


def test_feature_map_is_the_module_up_to_layer4():
    net = PneumoniaNet("none").eval()
    x = torch.randn(2, 1, 224, 224)
    with torch.no_grad():
        logit, features = net(x)
        assert torch.equal(net.feature_map(x), features)
        pooled = features.mean(dim=(2, 3))
        assert torch.allclose(net.fc(pooled), logit, atol=1e-5)


def test_adapt_input_conv_sums_rgb_kernels():
    rgb = torch.randn(64, 3, 7, 7)
    gray = adapt_input_conv(rgb)
    assert gray.shape == (64, 1, 7, 7)
    assert torch.allclose(gray[:, 0], rgb[:, 0] + rgb[:, 1] + rgb[:, 2])
    # a gray image through the adapted kernel equals the same image in all three RGB channels
    x = torch.randn(1, 1, 32, 32)
    assert torch.allclose(torch.conv2d(x, gray), torch.conv2d(x.repeat(1, 3, 1, 1), rgb), atol=1e-4)


def test_pretrained_from_local_state_dict(tmp_path):
    torch.manual_seed(0)
    reference = resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    net = PneumoniaNet(str(path))
    assert torch.allclose(net.conv1.weight, reference.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(net.feature_map[4][0].conv1.weight, reference.layer1[0].conv1.weight)
    assert net.fc.out_features == 1


def test_pretrained_file_errors_name_the_file(tmp_path):
    with pytest.raises(PretrainedWeightsError, match="missing.pth"):
        PneumoniaNet(str(tmp_path / "missing.pth"))
    junk = tmp_path / "junk.pth"
    junk.write_text("not a state dict")
    with pytest.raises(PretrainedWeightsError, match="junk.pth"):
        PneumoniaNet(str(junk))


def test_offline_imagenet_error_names_alternatives(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(PretrainedWeightsError) as info:
        PneumoniaNet("imagenet")
    message = str(info.value)
    assert "offline" in message and "--pretrained none" in message and "--pretrained PATH" in message


def test_the_loading_architecture_is_torchvisions_resnet18_layer_for_layer():
    """A Predictor builds the network without torchvision (pneumocam.model.resnet, for start-up time): the same
    state-dict keys and shapes as the torchvision-built network, and bit-identical outputs for the same weights."""
    torch.manual_seed(0)
    reference = PneumoniaNet("none").eval()
    loading = PneumoniaNet(weights_follow=True).eval()
    assert [(k, v.shape) for k, v in reference.state_dict().items()] == \
        [(k, v.shape) for k, v in loading.state_dict().items()]
    loading.load_state_dict(reference.state_dict())
    x = torch.randn(2, 1, 224, 224)
    with torch.no_grad():
        (logit_a, features_a), (logit_b, features_b) = reference(x), loading(x)
    assert torch.equal(logit_a, logit_b) and torch.equal(features_a, features_b)
