import matplotlib
import numpy as np
import pytest

from pneumocam.explain import (
    EVIDENCE_SPAN,
    ShownMap,
    colour_bar_description,
    colour_bar_strip,
    overlay_cam,
    overlay_evidence,
    overlay_layer,
    side_by_side,
)


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


def test_side_by_side_has_original_overlay_and_a_colour_bar_in_probabilities():
    shown = ShownMap(np.linspace(-5, 5, 64).reshape(8, 8), "absolute", 0.288, "coolwarm")
    figure = side_by_side(np.zeros((8, 8)), shown, title="x", boxes=[(1, 1, 3, 3)])
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[:2] == ["original", "CAM, absolute scale"] and len(figure.axes) == 3  # the third: the colour bar
    bar = figure.axes[2]
    assert [t.get_text() for t in bar.get_yticklabels()][2] == "0.288" and "threshold 0.288" in bar.get_ylabel()
    assert len(figure.axes[1].patches) == 1
    relative = side_by_side(np.zeros((8, 8)), ShownMap(np.ones((8, 8))))
    assert "not evidence" in relative.axes[2].get_ylabel()


def test_evidence_is_warm_above_the_boundary_cool_below_and_the_xray_at_it():
    image = np.full((3, 3), 0.5, np.float32)
    evidence = np.array([[-8, -4, -1], [0, 0, 0], [1, 4, 8]], np.float32)
    out = overlay_evidence(image, evidence, alpha=0.6)
    assert np.allclose(out[1], 0.5)  # at the threshold: the X-ray itself
    assert (out[0, :, 2] > out[0, :, 0]).all() and (out[2, :, 0] > out[2, :, 2]).all()  # cool below, warm above
    assert np.allclose(out[0, 0], out[0, 1]) and np.allclose(out[2, 1], out[2, 2])  # clipped at the span's ends
    strength = np.linalg.norm(out - 0.5, axis=-1)  # the colour's strength grows with the distance
    assert strength[2, 1] > strength[2, 0] + 0.1 and strength[0, 1] > strength[0, 2] + 0.1


def test_a_constant_added_to_every_cell_changes_the_absolute_overlay_not_the_relative():
    import torch

    from pneumocam.explain import upsample_and_normalize

    rng = np.random.default_rng(0)
    image, cells = rng.random((224, 224)).astype(np.float32), rng.normal(0, 2, (1, 7, 7)).astype(np.float32)
    relative = [overlay_cam(image, upsample_and_normalize(torch.from_numpy(c))[0].numpy()) for c in (cells, cells + 3)]
    assert np.allclose(relative[0], relative[1], atol=1e-5)
    evidence = [np.kron(c[0], np.ones((32, 32), np.float32)) - 1 for c in (cells, cells + 3)]
    absolute = [overlay_evidence(image, e) for e in evidence]
    assert np.abs(absolute[0] - absolute[1]).max() > 0.1


def test_the_colour_bar_as_pixels_and_as_data():
    shown = ShownMap(np.zeros((4, 4)), "absolute", 0.5, "coolwarm")
    strip = colour_bar_strip(224, shown)
    assert strip.shape == (44, 224, 3)
    left, right = strip[6, 20], strip[6, 203]  # the bar's two ends: blue, then red
    assert left[2] > left[0] and right[0] > right[2]
    described = colour_bar_description(shown)
    assert described["ticks"][2] == {"at": 0.5, "label": "0.5"} and described["span_logit"] == EVIDENCE_SPAN
    assert described["colours"][0].startswith("#") and len(described["colours"]) == 11
    layer = overlay_layer(ShownMap(np.array([[-EVIDENCE_SPAN, 0.0, EVIDENCE_SPAN / 2]]), "absolute", 0.5, "coolwarm"))
    assert layer.shape == (1, 3, 4) and np.allclose(layer[0, :, 3], [1.0, 0.0, 0.5])


@pytest.mark.slow
def test_parallel_drawing_writes_the_same_pngs_as_serial(tmp_path):
    from pneumocam.commands.cam import MIN_IMAGES_PER_WORKER, draw_side_by_sides
    from pneumocam.explain import SideBySideJob

    rng = np.random.default_rng(0)
    images = [(rng.random((32, 32)), rng.random((32, 32))) for _ in range(2 * MIN_IMAGES_PER_WORKER)]

    def jobs(folder):
        return [SideBySideJob(tmp_path / folder / f"{i}.png", image, ShownMap(cam), f"image {i}", boxes=((2, 2, 9, 9),))
                for i, (image, cam) in enumerate(images)]

    (tmp_path / "serial").mkdir()
    (tmp_path / "parallel").mkdir()
    draw_side_by_sides(jobs("serial"), workers=1)
    draw_side_by_sides(jobs("parallel"), workers=2)
    for i in range(len(images)):
        assert (tmp_path / "serial" / f"{i}.png").read_bytes() == (tmp_path / "parallel" / f"{i}.png").read_bytes()
    assert sorted(p.name for p in (tmp_path / "parallel").iterdir()) == sorted(f"{i}.png" for i in range(len(images)))


@pytest.mark.parametrize("scale", ["absolute", "relative"])
def test_the_palette_layer_png_carries_the_layer_colours_and_weights(scale):
    import io

    from PIL import Image

    from pneumocam.explain import layer_png

    rng = np.random.default_rng(0)
    values = rng.normal(0, 3, (64, 64)) if scale == "absolute" else rng.uniform(0, 1, (64, 64))
    shown = ShownMap(values.astype(np.float32), scale, 0.5, "coolwarm" if scale == "absolute" else "jet")
    with Image.open(io.BytesIO(layer_png(shown))) as image:
        sent = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255
    assert np.abs(sent - overlay_layer(shown)).max() <= 1.5 / 255
