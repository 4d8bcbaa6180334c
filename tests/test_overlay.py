import matplotlib
import numpy as np
import pytest

from pneumocam.overlay import overlay_cam, side_by_side


def test_overlay_pixels_are_the_alpha_blend():
    image = np.array([[0.0, 1.0], [0.5, 0.25]], dtype=np.float32)
    cam = np.array([[0.0, 1.0], [0.5, 0.0]], dtype=np.float32)
    out = overlay_cam(image, cam, alpha=0.4, colormap="jet")
    jet = matplotlib.colormaps["jet"]
    for (r, c) in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        expected = 0.6 * image[r, c] + 0.4 * np.array(jet(float(cam[r, c]))[:3])
        assert np.allclose(out[r, c], expected, atol=1e-6)
    # jet: 0 is dark blue, 1 is dark red
    assert out[0, 0, 2] > out[0, 0, 0] and out[0, 1, 0] > out[0, 1, 2]


@pytest.mark.parametrize("colormap", ["jet", "inferno", "gray"])
def test_overlay_colours_are_the_colormaps_everywhere(colormap):
    rng = np.random.default_rng(1)
    image, cam = rng.random((64, 64)), np.concatenate([rng.random(4094), [0.0, 1.0]]).reshape(64, 64)
    expected = 0.5 * image[..., None] + 0.5 * matplotlib.colormaps[colormap](cam)[..., :3]
    assert np.abs(overlay_cam(image, cam, 0.5, colormap) - expected).max() < 1e-6


def test_overlay_rejects_mismatched_shapes_and_alpha():
    with pytest.raises(ValueError, match="same shape"):
        overlay_cam(np.zeros((2, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="alpha"):
        overlay_cam(np.zeros((2, 2)), np.zeros((2, 2)), alpha=2)


def test_side_by_side_has_original_and_overlay():
    figure = side_by_side(np.zeros((8, 8)), np.ones((8, 8)), title="x", boxes=[(1, 1, 3, 3)])
    assert [ax.get_title() for ax in figure.axes] == ["original", "CAM (jet, alpha 0.5)"]
    assert len(figure.axes[1].patches) == 1


@pytest.mark.slow
def test_parallel_drawing_writes_the_same_pngs_as_serial(tmp_path):
    from pneumocam.commands.explain import MIN_IMAGES_PER_WORKER, draw_side_by_sides
    from pneumocam.overlay import SideBySideJob

    rng = np.random.default_rng(0)
    images = [(rng.random((32, 32)), rng.random((32, 32))) for _ in range(2 * MIN_IMAGES_PER_WORKER)]

    def jobs(folder):
        return [SideBySideJob(tmp_path / folder / f"{i}.png", image, cam, f"image {i}", boxes=((2, 2, 9, 9),))
                for i, (image, cam) in enumerate(images)]

    (tmp_path / "serial").mkdir()
    (tmp_path / "parallel").mkdir()
    draw_side_by_sides(jobs("serial"), workers=1)
    draw_side_by_sides(jobs("parallel"), workers=2)
    for i in range(len(images)):
        assert (tmp_path / "serial" / f"{i}.png").read_bytes() == (tmp_path / "parallel" / f"{i}.png").read_bytes()
    assert sorted(p.name for p in (tmp_path / "parallel").iterdir()) == sorted(f"{i}.png" for i in range(len(images)))
