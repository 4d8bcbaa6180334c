import json
from pathlib import Path

import pytest
from PIL import Image

from pneumocam.commands.demo import real_examples, run_demo
from pneumocam.config import DemoConfig


def test_real_examples_are_shipped_with_their_credits():
    examples = real_examples()
    assert len(examples) == 4 and all(Image.open(p).size == (224, 224) for p in examples)
    credits = (examples[0].parent / "CREDITS.md").read_text()
    assert "CC BY 4.0" in credits and "Kermany" in credits


@pytest.mark.slow
def test_small_demo_runs_every_stage_and_the_bundled_model_on_real_xrays(tmp_path):
    summary = run_demo(tmp_path, DemoConfig(n_images=40, epochs=1))
    assert set(summary["timings_s"]) == {"synth", "prepare", "train", "evaluate", "cam", "real", "localize"}
    real = summary["real_examples"]
    assert real["model"] == "pneumocam-cxr" and len(real["images"]) == 4
    assert all(Path(r["overlay"]).stat().st_size > 1000 and 0 <= r["probability"] <= 1 for r in real["images"])
    assert (tmp_path / "real" / "cams.csv").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["real_examples"] == real
