from pathlib import Path

import numpy as np
import pytest

from pneumocam.model import OutOfRange, fit_out_of_range

EXAMPLES = Path(__file__).resolve().parents[1] / "src" / "pneumocam" / "examples"


def test_the_threshold_is_the_calibration_quantile_and_shifted_features_are_flagged():
    rng = np.random.default_rng(0)
    scale = rng.random(32) + 0.5
    train, calibration, new = (rng.normal(0, 1, (n, 32)) * scale for n in (2000, 1000, 4000))
    detector = fit_out_of_range(train, calibration, quantile=0.95)
    assert np.mean(detector.distances(calibration) > detector.threshold) == pytest.approx(0.05, abs=0.002)
    assert np.mean(detector.distances(new) > detector.threshold) == pytest.approx(0.05, abs=0.02)
    shifted = new + 2 * scale
    assert np.mean(detector.distances(shifted) > detector.threshold) > 0.99
    assert detector.reason(detector.threshold + 1).startswith("does not look like") and detector.reason(0.0) == ""
    again = OutOfRange.from_metadata(detector.to_metadata())
    assert np.allclose(again.distances(new[:10]), detector.distances(new[:10]), atol=1e-3)
    assert OutOfRange.from_metadata(None) is None


def test_the_bundled_model_flags_pictures_that_are_not_chest_x_rays_and_passes_real_ones():
    import matplotlib
    from PIL import Image

    from pneumocam.data import to_model_input
    from pneumocam.deploy import Predictor

    predictor = Predictor.from_checkpoint("pneumocam-cxr")
    photo = np.asarray(Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("L"))
    xray = predictor.load(sorted(EXAMPLES.glob("*.jpeg"))[0])
    odd = [to_model_input(photo / 255.0), np.full((224, 224), 0.5, np.float32), 1 - xray]  # photo, flat, inverted
    flagged = predictor.predict_arrays(odd, cam=False)
    assert all(p.ood for p in flagged), [p.ood_distance for p in flagged]
    assert "feature distance" in flagged[0].ood_reason
    examples, _ = predictor.predict_files(sorted(EXAMPLES.glob("*.jpeg")), cam=False)
    assert len(examples) == 4 and not any(p.ood for p in examples)
