import pytest
import torch
import torch.nn.functional as F

from conftest import receptive_field_centres
from pneumocam.explain import class_activation_map, normalize_maps, upsample_and_normalize
from pneumocam.model import PneumoniaNet


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    model = PneumoniaNet("none").eval()
    torch.nn.init.normal_(model.fc.weight, std=0.5)
    torch.nn.init.normal_(model.fc.bias, std=0.5)
    return model


def test_mean_cam_plus_bias_equals_logit(net):
    x = torch.randn(4, 1, 224, 224)
    with torch.no_grad():
        logit, features = net(x)
    cam = class_activation_map(features, net.fc.weight)
    assert cam.shape == (4, 7, 7)
    assert torch.allclose(cam.mean(dim=(1, 2)) + net.fc.bias, logit[:, 0], atol=1e-5)


def test_cam_is_the_weighted_sum_of_channels():
    features = torch.zeros(1, 3, 2, 2)
    features[0, 0] = torch.tensor([[1.0, 0], [0, 0]])
    features[0, 2] = torch.tensor([[0, 0], [0, 2.0]])
    cam = class_activation_map(features, torch.tensor([[3.0, 5.0, -1.0]]))
    assert torch.equal(cam[0], torch.tensor([[3.0, 0], [0, -2.0]]))


def test_batched_cam_equals_one_by_one(net):
    x = torch.randn(3, 1, 224, 224)
    with torch.no_grad():
        _, features = net(x)
        batched = upsample_and_normalize(class_activation_map(features, net.fc.weight))
        for i in range(3):
            _, single_features = net(x[i : i + 1])
            single = upsample_and_normalize(class_activation_map(single_features, net.fc.weight))
            assert torch.allclose(batched[i], single[0], atol=1e-5)


def test_normalize_constant_map_gives_zeros_not_nan():
    maps = torch.stack([torch.full((7, 7), 3.0), torch.arange(49.0).reshape(7, 7)])
    out = normalize_maps(maps)
    assert torch.equal(out[0], torch.zeros(7, 7))
    assert out[1].min() == 0 and out[1].max() == 1
    assert not torch.isnan(upsample_and_normalize(maps)).any()


def test_upsample_gives_224_in_unit_range(net):
    raw = torch.randn(2, 7, 7)
    up = upsample_and_normalize(raw)
    assert up.shape == (2, 224, 224)
    assert up.min() >= 0 and up.max() <= 1
    # the peak of the upsampled map lies in the cell of the raw map's peak
    peak = int(torch.argmax(up[0]))
    row, col = divmod(peak, 224)
    raw_peak = divmod(int(torch.argmax(raw[0])), 7)
    assert (row // 32, col // 32) == raw_peak


def test_receptive_field_alignment_puts_cell_p_on_pixel_32p():
    raw = torch.zeros(1, 7, 7)
    raw[0, 3, 5] = 1.0
    up = upsample_and_normalize(raw)
    assert divmod(int(torch.argmax(up[0])), 224) == (3 * 32, 5 * 32)
    assert float(up[0, 96, 160]) == 1.0 and float(up[0, 96 + 16, 160]) == pytest.approx(0.5)  # halfway to cell 4
    # beyond the last cell's centre (pixel 192) the edge value is kept
    raw = torch.arange(49.0).reshape(1, 7, 7)
    up = upsample_and_normalize(raw)
    assert torch.allclose(up[0, 192:, 192:], torch.ones(32, 32))


def test_the_default_placement_is_where_the_networks_own_layers_centre_each_cell(net):
    """Tied to the architecture, not to the convention: if a layer's stride or padding changed, or the upsampling
    put cell p anywhere but at its receptive field's centre, this fails (block-centre does)."""
    centres = receptive_field_centres(net)
    assert centres == [32.0 * p for p in range(7)]
    for alignment, should_match in (("receptive-field", True), ("block-centre", False)):
        peaks = []
        for p in range(6):  # the last cell's centre is the edge, where the map keeps its value
            raw = torch.zeros(1, 7, 7)
            raw[0, p, p] = 1.0
            peaks.append(divmod(int(torch.argmax(upsample_and_normalize(raw, alignment=alignment)[0])), 224))
        assert (peaks == [(int(c), int(c)) for c in centres[:6]]) is should_match


def test_block_centre_alignment_is_the_usual_resize():
    raw = torch.randn(2, 7, 7)
    expected = F.interpolate(normalize_maps(raw)[:, None], size=(224, 224), mode="bilinear", align_corners=False)
    assert torch.allclose(upsample_and_normalize(raw, alignment="block-centre"), expected[:, 0].clamp(0, 1))
    with pytest.raises(ValueError, match="alignment"):
        upsample_and_normalize(raw, alignment="corners")


def test_shape_errors():
    with pytest.raises(ValueError, match="channels"):
        class_activation_map(torch.zeros(1, 4, 7, 7), torch.zeros(5))
    with pytest.raises(ValueError, match="B, C, h, w"):
        class_activation_map(torch.zeros(4, 7, 7), torch.zeros(4))


def test_grad_cam_equals_relu_cam_over_hw(net):
    from pneumocam.explain import grad_cam

    x = torch.randn(3, 1, 224, 224)
    logit, features = net(x)  # grad enabled: features are in the graph
    cam = class_activation_map(features.detach(), net.fc.weight.detach())
    assert torch.allclose(grad_cam(features, logit), torch.relu(cam) / 49, atol=1e-5)


def test_grad_cam_plus_plus_is_nonnegative_and_batch_consistent(net):
    from pneumocam.explain import grad_cam_plus_plus

    x = torch.randn(2, 1, 224, 224)
    logit, features = net(x)
    maps = grad_cam_plus_plus(features, logit)
    assert maps.shape == (2, 7, 7) and (maps >= 0).all()
    single_logit, single_features = net(x[1:])
    assert torch.allclose(grad_cam_plus_plus(single_features, single_logit)[0], maps[1], atol=1e-4)


def test_gradient_methods_need_the_graph(net):
    from pneumocam.explain import grad_cam

    with torch.no_grad():
        logit, features = net(torch.randn(1, 1, 224, 224))
    with pytest.raises(ValueError, match="autograd graph"):
        grad_cam(features, logit)
