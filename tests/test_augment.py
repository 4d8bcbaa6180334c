import torch

from pneumocam.data import AffineCropRanges, IntensityRanges, augment_batch, jitter_intensity, sample_matrices

IDENTITY = AffineCropRanges(degrees=0, translate=0, scale=(1, 1), crop_scale=(1, 1), crop_ratio=(1, 1))


def test_identity_ranges_leave_images_unchanged():
    images = torch.rand(3, 1, 32, 32)
    out = augment_batch(images, torch.Generator().manual_seed(0), IDENTITY)
    assert torch.allclose(out, images, atol=1e-5)


def test_centre_crop_of_a_quarter_area_zooms_by_two():
    ranges = AffineCropRanges(degrees=0, translate=0, scale=(1, 1), crop_scale=(0.25, 0.25), crop_ratio=(1, 1))
    theta = sample_matrices(2, torch.Generator().manual_seed(1), ranges)
    assert torch.allclose(theta[:, :, :2], torch.eye(2).expand(2, 2, 2) * 0.5, atol=1e-6)
    assert (theta[:, :, 2].abs() <= 0.5 + 1e-6).all()  # the crop stays inside the frame


def test_each_image_gets_its_own_parameters_and_the_generator_makes_it_repeatable():
    images = torch.rand(1, 1, 64, 64).repeat(4, 1, 1, 1)
    a = augment_batch(images, torch.Generator().manual_seed(5))
    b = augment_batch(images, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])
    assert a.min() >= 0 and a.max() <= 1 and a.shape == images.shape


def test_parameter_ranges_match_the_course_augmentation():
    theta = sample_matrices(4000, torch.Generator().manual_seed(2)).double()
    linear = theta[:, :, :2]
    # |det| = crop area / zoom^2: area in [0.35, 1], zoom in [0.9, 1.1]
    det = torch.linalg.det(linear).abs()
    assert det.min() >= 0.35 / 1.1**2 - 1e-6 and det.max() <= 1 / 0.9**2 + 1e-6
    assert det.min() < 0.35 and det.max() > 1.0


def test_shift_recipe_moves_and_turns_but_never_crops():
    from pneumocam.data import AUGMENT_RANGES

    theta = sample_matrices(4000, torch.Generator().manual_seed(3), AUGMENT_RANGES["shift"]).double()
    det = torch.linalg.det(theta[:, :, :2]).abs()  # 1 / zoom^2 only: zoom in [0.9, 1.1]
    assert det.min() >= 1 / 1.1**2 - 1e-6 and det.max() <= 1 / 0.9**2 + 1e-6
    # 10% of the size is 0.2 in [-1, 1] units per axis; the offset is that shift turned and divided by the zoom
    offset = theta[:, :, 2].norm(dim=1)
    assert 0.25 < offset.max() <= 0.2 * 2**0.5 / 0.9 + 1e-6


def test_intensity_jitter_changes_exposure_not_shape():
    images = torch.rand(6, 1, 32, 32)
    out = jitter_intensity(images, torch.Generator().manual_seed(4))
    assert torch.equal(out, jitter_intensity(images, torch.Generator().manual_seed(4)))  # repeatable
    assert out.min() >= 0 and out.max() <= 1 and out.shape == images.shape
    assert len({round(float(o.mean()), 4) for o in out}) == 6  # each image its own exposure
    # a monotone change of grey values: every pixel keeps its rank within its image (clipping aside)
    inside = (out > 0) & (out < 1)
    for image, jittered, keep in zip(images, out, inside, strict=True):
        order = torch.argsort(image[keep])
        assert (torch.diff(jittered[keep][order]) >= -1e-6).all()


def test_intensity_ranges_mean_what_they_say():
    grey = torch.full((2, 1, 8, 8), 0.25)
    unchanged = IntensityRanges(gamma=(1, 1), contrast=(1, 1), brightness=(0, 0))
    assert torch.allclose(jitter_intensity(grey, None, unchanged), grey)
    brighter = IntensityRanges(gamma=(0.5, 0.5), contrast=(1, 1), brightness=(0.1, 0.1))
    assert torch.allclose(jitter_intensity(grey, None, brighter), torch.full_like(grey, 0.6))  # 0.25 ** 0.5 + 0.1
    ramp = torch.linspace(0.3, 0.7, 64).reshape(1, 1, 8, 8)
    steeper = IntensityRanges(gamma=(1, 1), contrast=(1.2, 1.2), brightness=(0, 0))
    assert torch.allclose(jitter_intensity(ramp, None, steeper).std(), ramp.std() * 1.2, atol=1e-6)
