import numpy as np
import pytest
import torch

from pneumocam.explain import (
    linear_impute,
    multiscale_impute,
    perturbation_curves,
    road_curves,
    salience_order,
    target_scores,
)

SIZE = 32


def _linear_model(seed=0):
    """A 'network' whose logit is a known linear function of the pixels: w . x."""
    weights = np.random.default_rng(seed).normal(0, 1, (SIZE, SIZE))

    def score(images: np.ndarray) -> np.ndarray:
        return (images * weights).sum(axis=(1, 2))[:, None] / 50

    return weights, score


def _images(n=6, seed=1):
    return np.random.default_rng(seed).random((n, SIZE, SIZE)).astype(np.float32)


def test_on_a_linear_model_the_exact_map_scores_best_and_the_reversed_map_worst():
    weights, score = _linear_model()
    images, mean = _images(), 0.5
    exact = weights * (images - mean)  # each pixel's contribution to the logit against the replacement
    random = np.random.default_rng(2).random(images.shape)
    areas = {}
    for name, maps in {"exact": exact, "random": random, "reversed": -exact}.items():
        deletion = perturbation_curves(score, images, maps, "deletion", "mean", mean)
        insertion = perturbation_curves(score, images, maps, "insertion", "mean", mean)
        areas[name] = (deletion.area("logit").mean(), insertion.area("logit").mean())
    assert areas["exact"][0] < areas["random"][0] < areas["reversed"][0]  # deletion: lower is better
    assert areas["exact"][1] > areas["random"][1] > areas["reversed"][1]  # insertion: higher is better
    morf = road_curves(score, images, exact, "morf").area("logit").mean()
    lerf = road_curves(score, images, exact, "lerf").area("logit").mean()
    assert morf < lerf


def test_the_curves_of_a_map_and_of_its_negation_are_mirror_images():
    _, score = _linear_model(3)
    images = _images(4, 5)
    maps = np.random.default_rng(6).random(images.shape)
    for replacement in ("mean", "blur"):
        deletion = perturbation_curves(score, images, maps, "deletion", replacement)
        insertion_of_negation = perturbation_curves(score, images, -maps, "insertion", replacement)
        assert np.allclose(deletion.logit, insertion_of_negation.logit[:, ::-1], atol=1e-9)
    assert deletion.logit.shape == (4, 11) and np.all((deletion.probability > 0) & (deletion.probability < 1))


def test_a_softmax_over_the_single_logit_fails_loudly():
    outputs = np.array([[0.3], [-2.0]])
    with pytest.raises(ValueError, match="softmax over the single pneumonia logit is always 1.0"):
        target_scores(outputs, "softmax")
    with pytest.raises(ValueError, match="single pneumonia logit"):
        target_scores(np.zeros((2, 2)), "logit")
    assert np.allclose(target_scores(outputs, "probability"), 1 / (1 + np.exp(-outputs[:, 0])))


def test_linear_imputation_solves_the_neighbour_equations_like_a_sparse_solver():
    from scipy.sparse import lil_matrix
    from scipy.sparse.linalg import spsolve

    rng = np.random.default_rng(0)
    image = rng.random((12, 12))
    removed = rng.random((12, 12)) < 0.6
    filled = linear_impute(torch.from_numpy(image)[None], torch.from_numpy(removed)[None], tolerance=1e-10)[0].numpy()
    assert np.array_equal(filled[~removed], image[~removed])
    # reference: scipy's direct solve of the same equations
    index = -np.ones(image.shape, int)
    index[removed] = np.arange(removed.sum())
    a, b = lil_matrix((removed.sum(), removed.sum())), np.zeros(removed.sum())
    for r, c in zip(*np.nonzero(removed), strict=True):
        i = index[r, c]
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                rr, cc = r + dr, c + dc
                if (dr or dc) and 0 <= rr < 12 and 0 <= cc < 12:
                    w = 1 / 12 if dr and dc else 1 / 6
                    a[i, i] += w
                    if removed[rr, cc]:
                        a[i, index[rr, cc]] -= w
                    else:
                        b[i] += w * image[rr, cc]
    assert np.allclose(filled[removed], spsolve(a.tocsr(), b), atol=1e-5)


def test_salience_order_is_most_salient_first():
    maps = np.array([[[0.1, 0.9], [0.5, 0.2]]])
    assert salience_order(maps).tolist() == [[1, 2, 3, 0]]


def test_the_multiscale_start_reaches_the_same_imputation_of_a_large_hole():
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.random((2, 112, 112)))
    removed = torch.zeros((2, 112, 112), dtype=torch.bool)
    removed[:, 10:100, 20:90] = True  # one big region, the hard case for plain conjugate gradients
    exact = linear_impute(image, removed, tolerance=1e-10)
    fast = multiscale_impute(image.float(), removed)
    assert float((fast.double() - exact).abs().max()) < 0.01
