"""evaluate, cam and localize stages end to end on the tiny checkpoint."""

import csv
import json
import re

import numpy as np
import pytest

from pneumocam.commands.cam import explain_files
from pneumocam.commands.evaluate import evaluate
from pneumocam.config import CamConfig, EvalConfig

QUICK = EvalConfig(bootstrap=0, report=False, maps=False)  # point metrics only

REQUIRED = {"n", "n_positive", "threshold", "accuracy", "precision", "recall", "f1", "specificity", "auroc", "auprc",
            "brier", "confusion", "ci95"}


@pytest.mark.slow
def test_evaluate_writes_metrics_and_predictions(tiny_checkpoint, phantom_data, tmp_path):
    metrics = evaluate(tiny_checkpoint, phantom_data, tmp_path, EvalConfig(bootstrap=50, maps=False))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert REQUIRED <= set(on_disk) and on_disk["n"] == metrics["n"] == 6
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    # predictions.csv recomputes to metrics.json
    labels = np.array([int(r["label"]) for r in rows])
    preds = np.array([int(r["predicted"]) for r in rows])
    assert on_disk["confusion"]["tp"] == int(((preds == 1) & (labels == 1)).sum())
    assert on_disk["accuracy"] == (preds == labels).mean()
    assert on_disk["train_data_fingerprint"] == on_disk["data_fingerprint"]


@pytest.mark.slow
def test_cam_writes_overlay_and_maps_per_image(tiny_checkpoint, phantom_data, tmp_path):
    import torch

    from pneumocam.deploy import Predictor
    from pneumocam.explain import upsample_and_normalize
    from pneumocam.model import logit

    inputs = [phantom_data / "Processed" / "val"]
    report = explain_files(tiny_checkpoint, inputs, tmp_path, CamConfig())
    assert len(report.rows) == 6 and report.failures == []
    predictor = Predictor.from_checkpoint(tiny_checkpoint)
    bias = float(predictor.net.fc.bias.detach())
    with open(tmp_path / "cams.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    for row in rows:  # the files on disk, tied to each other and to the CSV
        assert (tmp_path / row["png"]).stat().st_size > 1000 and row["scale"] == "absolute"
        raw = np.load(tmp_path / row["cam7x7"])
        up = np.load(tmp_path / row["cam224"])
        evidence = np.load(tmp_path / row["evidence224"])
        assert np.allclose(up, upsample_and_normalize(torch.from_numpy(raw)[None])[0].numpy(), atol=1e-6)
        assert raw.mean() + bias == pytest.approx(float(row["logit"]), abs=1e-4)  # the CAM explains the logit
        boundary = logit(float(row["threshold"]))
        assert np.allclose(evidence[::32, ::32], predictor.calibration.apply(raw + bias) - boundary, atol=1e-4)


@pytest.mark.slow
def test_localize_writes_scores_baselines_and_grid(tiny_checkpoint, phantom_data, tmp_path):
    import pneumocam.evaluation.map_assessment as maps
    from pneumocam.commands.localize import localize
    from pneumocam.config import LocalizeConfig

    result = localize(tiny_checkpoint, phantom_data, tmp_path, LocalizeConfig(randomize_check=True, batch_size=8,
                                                                              split="all"))
    on_disk = json.loads((tmp_path / "localization.json").read_text())
    assert {"n_images", "pointing_game", "mean_iou", "baseline_random"} <= set(on_disk)
    assert on_disk["n_images"] == result["n_images"] == 12  # every positive phantom has boxes
    assert set(on_disk["methods"]) == {"cam", "gradcam", "gradcam++"}
    assert on_disk["box_loss_weight"] == 0.0  # the tiny model learnt from labels only
    # the baselines, recomputed by hand: the centre prior's peak and the seeded random maps
    from pneumocam.data import box_mask, load_boxes
    from pneumocam.explain import centre_prior, peak, pointing_hit

    boxes = [b for f, b in sorted(load_boxes(phantom_data).items())]
    centre = peak(centre_prior((224, 224)))
    assert on_disk["baseline_centre"]["pointing_game"] == pytest.approx(
        np.mean([box_mask(b, (224, 224))[centre] for b in boxes]))
    random = maps.random_maps(len(boxes), 0)
    assert on_disk["baseline_random"]["pointing_game"] == pytest.approx(
        np.mean([pointing_hit(m, box_mask(b, (224, 224))) for m, b in zip(random, boxes, strict=True)]))
    check = on_disk["randomization_check"]
    assert set(check) == {"cam", "gradcam", "gradcam++"}
    assert all(c["mean_rank_correlation"] < 0.99 for c in check.values())  # re-initialising layer4 changed the maps
    assert (tmp_path / "localization_grid.png").stat().st_size > 1000
    with open(tmp_path / "localization.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 * 12 and {r["method"] for r in rows} == {"cam", "gradcam", "gradcam++"}
    cam_rows = [r for r in rows if r["method"] == "cam"]
    assert np.mean([int(r["pointing_hit"]) for r in cam_rows]) == pytest.approx(on_disk["pointing_game"])
    assert all(0 <= float(r["probability"]) <= 1 for r in rows)
    assert all((r["pointing_hit"] == "1") == (float(r["peak_distance_px"]) == 0) for r in rows)


@pytest.mark.slow
def test_evaluate_writes_plots_gallery_and_a_self_contained_report(tiny_checkpoint, phantom_data, tmp_path):
    metrics = evaluate(tiny_checkpoint, phantom_data, tmp_path, EvalConfig(bootstrap=20, gallery_size=2, maps=False))
    for name in ("roc.png", "pr.png", "confusion.png", "calibration.png", "gallery.csv"):
        assert (tmp_path / name).stat().st_size > 100, name
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert metrics["data_fingerprint"] in html
    names = [p["name"] for p in metrics["operating_points"]]
    assert names == ["threshold 0.5", "Youden-optimal", "sensitivity >= 0.9"]
    assert any("optimistic" in w for w in metrics["warnings"])
    with open(tmp_path / "gallery.csv") as f:
        rows = list(csv.DictReader(f))
    assert all((tmp_path / r["png"]).exists() for r in rows)
    with open(tmp_path / "predictions.csv") as f:
        first = next(csv.DictReader(f))
    assert first["patient"] and first["file"].startswith("Processed/val/")


@pytest.mark.slow
def test_thresholds_from_another_split_have_no_same_data_warning(tiny_checkpoint, phantom_data, tmp_path):
    metrics = evaluate(tiny_checkpoint, phantom_data, tmp_path,
                       EvalConfig(threshold_from="train", bootstrap=0, report=False, maps=False))
    assert metrics["thresholds_chosen_on"] == "train"
    assert not any("thresholds were chosen" in w for w in metrics["warnings"])
    assert not (tmp_path / "report.html").exists()


@pytest.mark.slow
def test_compare_two_checkpoints(tiny_checkpoint, phantom_data, tmp_path):
    import torch

    from pneumocam.commands.evaluate import compare

    other = torch.load(tiny_checkpoint, map_location="cpu", weights_only=True)  # a second model: fc weights moved
    generator = torch.Generator().manual_seed(1)
    weight = other["state_dict"]["net.fc.weight"]
    other["state_dict"]["net.fc.weight"] = weight + 3 * weight.std() * torch.randn(weight.shape, generator=generator)
    torch.save(other, tmp_path / "other.ckpt")
    result = compare([tiny_checkpoint, tmp_path / "other.ckpt"], phantom_data, tmp_path / "out",
                     EvalConfig(bootstrap=200, report=False, maps=False))
    assert [m["model"] for m in result["models"]] == [0, 1]
    difference = result["paired_auroc_differences"][0]
    aurocs = [json.loads((tmp_path / "out" / f"model_{k}" / "metrics.json").read_text())["auroc"] for k in (0, 1)]
    assert aurocs[0] != aurocs[1] and difference["auroc_difference"] == pytest.approx(aurocs[1] - aurocs[0])
    low, high = difference["ci95"]
    assert low <= difference["auroc_difference"] <= high and low < high
    assert (tmp_path / "out" / "comparison.csv").exists()


@pytest.mark.slow
def test_localize_faithfulness_cis_margins_and_chexlocalize_export(tiny_checkpoint, phantom_data, tmp_path):
    import pickle

    from pneumocam.commands.localize import localize
    from pneumocam.config import LocalizeConfig

    result = localize(tiny_checkpoint, phantom_data, tmp_path, LocalizeConfig(
        split="all", methods=("cam", "gradcam"), batch_size=8, faithfulness=True, export="chexlocalize", max_images=3))
    cam = result["methods"]["cam"]
    means = {"pointing_game": cam["pointing_game"], "pixel_auprc": cam["pixel_auprc"],
             "chexlocalize_iou": cam["chexlocalize_iou"], "iou@0.5": cam["iou"]["0.5"], "iobb@0.5": cam["iobb"]["0.5"],
             "hit_rate_iobb@0.25": cam["hit_rate_iobb"]["0.25"], "energy_in_boxes": cam["energy_in_boxes"]}
    for key, mean in means.items():  # each CI around its own estimate
        low, high = cam["ci95"][key]
        assert low <= mean <= high, key
    with open(tmp_path / "localization.csv") as f:  # the estimate, recomputed from the per-image rows
        hits = [r["pointing_hit"] in ("1", "True") for r in csv.DictReader(f) if r["method"] == "cam"]
    assert len(hits) == 3 and cam["pointing_game"] == pytest.approx(np.mean(hits))
    margin = cam["margin_over_box_prior"]["pointing_game"]
    assert margin["mean"] == pytest.approx(cam["pointing_game"] - result["baseline_box_prior"]["pointing_game"])
    faithful = result["faithfulness"]
    assert set(faithful["maps"]) == {"cam", "gradcam", "random", "centre", "box_prior"}
    deletion = faithful["maps"]["cam"]["deletion"]
    assert len(deletion["curve"]["fractions"]) == 11 and 0 <= deletion["probability"] <= 1
    assert {"insertion", "road_morf", "road_lerf"} <= set(faithful["maps"]["random"])
    assert faithful["replacement"] == "blur" and faithful["wall_time_s"] > 0
    export = tmp_path / "chexlocalize"
    annotations = json.loads((export / "gt_annotations.json").read_text())
    assert len(annotations) == result["n_images"]
    first = next(iter(annotations.values()))
    assert first["img_size"] == [224, 224] and len(first["Airspace Opacity"][0]) == 4
    maps = sorted((export / "cam" / "maps").glob("*_Airspace Opacity_map.pkl"))
    assert len(maps) == result["n_images"]
    with open(maps[0], "rb") as f:
        record = pickle.load(f)
    assert tuple(record["map"].shape) == (1, 1, 224, 224) and record["task"] == "Airspace Opacity"
    assert record["gt"] == 1 and tuple(record["cxr_img"].shape) == (3, 224, 224) and 0 <= record["prob"] <= 1


@pytest.mark.slow
def test_localize_by_default_never_reads_a_training_image(tiny_checkpoint, phantom_data, tmp_path, monkeypatch):
    import pneumocam.commands.localize as loc
    import pneumocam.evaluation.map_assessment as maps

    read = []
    original = maps.load_file
    monkeypatch.setattr(maps, "load_file", lambda path: read.append(str(path)) or original(path))
    result = loc.localize(tiny_checkpoint, phantom_data, tmp_path, loc.LocalizeConfig(methods=("cam",)))
    assert result["split"] == "val" and not result["includes_training_boxes"]
    assert read and not any("/Processed/train/" in path for path in read)


@pytest.mark.slow
def test_localize_refuses_a_box_guided_models_training_boxes_unless_allowed(phantom_data, tmp_path):
    import pneumocam.commands.localize as loc
    from pneumocam.commands.train import fit
    from pneumocam.config import TrainConfig
    from pneumocam.errors import PneumocamError

    guided = fit(phantom_data, tmp_path / "run", TrainConfig(epochs=1, batch_size=4, pretrained="none",
                                                               box_loss_weight=0.1, fast_dev_run=True)).last_checkpoint
    for split in ("train", "all"):
        with pytest.raises(PneumocamError, match="box guidance.*--allow-training-boxes"):
            loc.localize(guided, phantom_data, tmp_path / split, loc.LocalizeConfig(split=split, methods=("cam",)))
    result = loc.localize(guided, phantom_data, tmp_path / "allowed",
                          loc.LocalizeConfig(split="train", methods=("cam",), allow_training_boxes=True))
    assert result["includes_training_boxes"] and result["box_loss_weight"] == 0.1


def test_evaluate_defaults_to_test_when_there_is_one_else_val_with_a_warning(tiny_checkpoint, phantom_source,
                                                                             phantom_data, tmp_path):
    from pneumocam.commands.prepare import prepare
    from pneumocam.config import PrepareConfig

    on_val = evaluate(tiny_checkpoint, phantom_data, tmp_path / "val", QUICK)
    assert on_val["split"] == "val" and on_val["split_chose_checkpoint"]
    assert any("chose the checkpoint" in w for w in on_val["warnings"])
    with_test = prepare(phantom_source, tmp_path / "data", PrepareConfig(val_fraction=0.25, test_fraction=0.25,
                                                                         workers=1))
    assert sum(with_test.counts["test"].values()) > 0
    on_test = evaluate(tiny_checkpoint, tmp_path / "data", tmp_path / "test", QUICK)
    assert on_test["split"] == "test" and not on_test["split_chose_checkpoint"]
    assert not any("chose the checkpoint" in w for w in on_test["warnings"])
    assert on_test["n"] == sum(with_test.counts["test"].values())


@pytest.mark.slow
def test_evaluate_names_a_damaged_prepared_file_in_one_line(tiny_checkpoint, phantom_data, tmp_path):
    import shutil
    import subprocess
    import sys

    data = tmp_path / "data"
    shutil.copytree(phantom_data, data)
    damaged = sorted((data / "Processed" / "val").rglob("*.npy"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    result = subprocess.run([sys.executable, "-m", "pneumocam.cli", "evaluate", str(tiny_checkpoint), str(data),
                             str(tmp_path / "out"), "--bootstrap", "0", "--no-report"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert damaged.name in result.stderr and "not a readable prepared image" in result.stderr


@pytest.mark.slow
def test_subgroups_recomputed_from_the_written_files_agree_with_metrics_json(tiny_checkpoint, phantom_data, tmp_path):
    import shutil

    import numpy as np
    from sklearn.metrics import brier_score_loss, confusion_matrix, roc_auc_score

    from pneumocam.files import read_csv, write_csv

    data = tmp_path / "data"
    shutil.copytree(phantom_data, data)
    manifest = read_csv(data / "manifest.csv")
    for i, row in enumerate(manifest):  # phantoms carry a view; give them a sex and an age as well
        row.update(sex="MF"[i % 2], age=str(15 + 3 * i))
    write_csv(data / "manifest.csv", list(manifest[0]), manifest)
    metrics = evaluate(tiny_checkpoint, data, tmp_path / "eval", EvalConfig(split="train", bootstrap=30, maps_images=3,
                                                                           threshold=0.5, min_subgroup_size=5))
    table = metrics["subgroups"]
    assert table["by"] == ["sex", "age_band", "view"]
    # independently, from predictions.csv and manifest.csv alone
    predictions = read_csv(tmp_path / "eval" / "predictions.csv")
    by_file = {r["file"]: r for r in read_csv(data / "manifest.csv")}
    probs = np.array([float(r["probability"]) for r in predictions])
    labels = np.array([int(r["label"]) for r in predictions])
    bands = {(0, 17): "0-17", (18, 39): "18-39", (40, 59): "40-59", (60, 79): "60-79", (80, 200): "80+"}

    def value(row, attribute):
        if attribute != "age_band":
            return by_file[row["file"]][attribute]
        age = int(by_file[row["file"]]["age"])
        return next(name for (low, high), name in bands.items() if low <= age <= high)

    assert len(table["groups"]) > 10
    for group in table["groups"]:
        mask = np.array([all(value(r, a) == v for a, v in group["attributes"].items()) for r in predictions])
        y, p = labels[mask], probs[mask]
        assert group["n"] == mask.sum() and group["small"] == (mask.sum() < 5)
        tn, fp, fn, tp = confusion_matrix(y, p >= 0.5, labels=[0, 1]).ravel()
        expected = {"prevalence": y.mean(), "auroc": roc_auc_score(y, p) if 0 < y.sum() < y.size else None,
                    "sensitivity": tp / (tp + fn) if tp + fn else None,
                    "specificity": tn / (tn + fp) if tn + fp else None}
        for name, reference in expected.items():
            assert (group[name] is None) if reference is None else group[name] == pytest.approx(reference, abs=1e-9)
        # ECE by its definition: 10 equal-width bins, |sum(p - y)| per bin over n
        edges = np.searchsorted(np.linspace(0, 1, 11), p, side="right") - 1
        ece = sum(abs((p - y)[edges == k].sum()) for k in range(11)) / y.size
        assert group["ece"] == pytest.approx(ece, abs=1e-9)
    assert metrics["brier"] == pytest.approx(brier_score_loss(labels, probs), abs=1e-9)
    rows = read_csv(tmp_path / "eval" / "subgroups.csv")
    assert [r["group"] for r in rows] == [g["name"] for g in table["groups"]]
    shortcut = metrics["shortcut"]
    assert shortcut["header_only"]["available"] and set(shortcut["within_view"]) <= {"AP", "PA"}
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "Subgroups" in html and "Shortcut check" in html
    # the phantoms' positives have boxes: the maps section, with faithfulness and the randomisation check
    assert "Can you trust these maps?" in html and "Randomisation check" in html
    maps = metrics["maps"]
    assert set(maps["faithfulness"]["maps"]) >= {"cam", "random", "centre"} and maps["randomization_check"]
    assert (tmp_path / "eval" / "faithfulness.png").stat().st_size > 1000
    assert (tmp_path / "eval" / "subgroups_sensitivity.png").stat().st_size > 1000


@pytest.mark.slow
def test_a_model_trained_at_another_image_size_keeps_it_through_every_stage(phantom_source, tmp_path):
    """prepare --image-size 96 -> train (in memory and from files) -> predict, cam, localize and export at 96 px,
    with a 3x3 CAM that still explains the logit."""
    import torch

    from pneumocam.commands.export import export_model
    from pneumocam.commands.localize import localize
    from pneumocam.commands.prepare import prepare
    from pneumocam.commands.train import fit
    from pneumocam.config import ExportConfig, LocalizeConfig, PrepareConfig, TrainConfig
    from pneumocam.data import load_boxes
    from pneumocam.deploy import Predictor
    from pneumocam.errors import PneumocamError

    data = tmp_path / "data"
    prepare(phantom_source, data, PrepareConfig(val_fraction=0.25, seed=0, workers=1, image_size=96))
    for in_memory in ("on", "off"):
        result = fit(data, tmp_path / in_memory, TrainConfig(epochs=1, batch_size=6, pretrained="none",
                                                             augment="original", box_loss_weight=0.5,
                                                             in_memory=in_memory, seed=0))
        meta = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)["pneumocam"]
        assert meta["image_size"] == meta["preprocessing"]["image_size"] == 96
    checkpoint = result.last_checkpoint
    predictor = Predictor.from_checkpoint(checkpoint)
    source = sorted(phantom_source.rglob("*.dcm"))[0]  # a 256-px DICOM, read and resized as in training
    [prediction], failures = predictor.predict_files([source])
    assert failures == [] and prediction.image.shape == prediction.cam.shape == (96, 96)
    assert prediction.cam_raw.shape == (3, 3)
    assert prediction.cam_raw.mean() + predictor.head_bias == pytest.approx(prediction.logit, abs=1e-4)
    with pytest.raises(PneumocamError, match="a 224x224 input for a model trained at 96x96"):
        predictor.forward([np.zeros((224, 224), np.float32)])  # prepared at another size: refused, not run
    report = explain_files(checkpoint, [source], tmp_path / "cams", CamConfig())
    assert report.failures == [] and np.load(tmp_path / "cams" / report.rows[0]["cam224"]).shape == (96, 96)
    located = localize(checkpoint, data, tmp_path / "located", LocalizeConfig(batch_size=8, split="val",
                                                                               methods=("cam",)))
    boxed = {f for f in load_boxes(data) if f.startswith("Processed/val/")}
    assert located["n_images"] == len(boxed) > 0 and 0 <= located["baseline_box_prior"]["pointing_game"] <= 1
    refusal = f"^{re.escape(str(data))}: prepared at 96x96 for a model trained at 224x224"
    with pytest.raises(PneumocamError, match=refusal):
        evaluate("pneumocam-cxr", data, tmp_path / "refused")  # the folder named before any image is read
    pytest.importorskip("onnxruntime", reason="ONNX export needs pneumocam[export]")
    parity = export_model(checkpoint, tmp_path / "model.onnx", ExportConfig())
    assert parity["parity_passed"]
    description = json.loads((tmp_path / "model.onnx.json").read_text())
    assert description["inputs"]["image"].startswith("(B, 1, 96, 96)")
    [fast], _ = Predictor.from_checkpoint(checkpoint, backend="onnxruntime").predict_files([source])
    assert fast.logit == pytest.approx(prediction.logit, abs=1e-4) and fast.cam_raw.shape == (3, 3)
