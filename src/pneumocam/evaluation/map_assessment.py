"""How far to trust a model's saliency maps, on the boxed images of a prepared split.

Every map of every method and baseline (random, centre prior, box prior) scored against the boxes with
patient-level CIs, each method's margin over the box prior, the model-randomisation check and the faithfulness
curves. `pneumocam localize` writes all of it; `pneumocam evaluate`'s report shows a sample of it.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from pneumocam.config import CAM_STRIDE, LocalizeConfig
from pneumocam.data.boxes import box_mask, load_boxes
from pneumocam.data.datasets import manifest_patients, read_fingerprint
from pneumocam.data.preprocess import load_file
from pneumocam.deploy.predictor import Predictor, batches
from pneumocam.errors import PneumocamError
from pneumocam.evaluation.metrics import Bootstrap, bootstrap_mean_ci
from pneumocam.explain.cam import upsample_and_normalize
from pneumocam.explain.faithfulness import (
    BLUR_SIGMA,
    ROAD_NOISE,
    ROAD_PERCENTAGES,
    STEPS,
    TARGETS,
    perturbation_curves,
    road_curves,
)
from pneumocam.explain.localization import centre_prior, per_image_values, rank_correlation, score_images, summarize
from pneumocam.model.calibration import Calibration, apply_by_view
from pneumocam.provenance import package_versions

log = logging.getLogger(__name__)


# The model-randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018):
# after re-initialising layer4 and fc a faithful method's maps must change; a mean Spearman rank
# correlation with the trained model's maps at or above this value fails the check.
RANDOMIZATION_MAX_CORRELATION = 0.5


def _boxed_files(boxes: dict[str, list], data_dir: Path, split: str) -> tuple[list[str], list[list]]:
    files = sorted(f for f in boxes if split == "all" or f.startswith(f"Processed/{split}/"))
    if not files:
        raise PneumocamError(f"{data_dir}: no images with boxes in split {split!r} (see boxes.csv)")
    return files, [boxes[f] for f in files]


def box_prior(boxes: dict[str, list], size: int = 224) -> np.ndarray | None:
    """The mean box mask of the training split's boxed images (`boxes`: data.boxes.load_boxes), scaled to [0, 1]:
    where boxes usually are. As a map it is one fixed guess for every image, so a saliency map must beat it to
    show it looks at the image at all (on RSNA its peak alone hits a box in over half the positives). None
    without training boxes."""
    training = [b for f, b in boxes.items() if f.startswith("Processed/train/")]
    if not training:
        return None
    mean = np.mean([box_mask(b, (size, size)) for b in training], axis=0)
    return (mean / mean.max()).astype(np.float32)


class ComputedMaps(NamedTuple):
    maps: dict[str, np.ndarray]  # method -> (N, S, S) in [0, 1], S the model input side
    logits: np.ndarray  # (N,)
    # method -> (N, S/32, S/32) at the network's own resolution: the raw map, or, for a library method that has none,
    # the mean of each cell's 32x32 block
    cells: dict[str, np.ndarray]


def compute_maps(predictor: Predictor, images: list[np.ndarray], methods, batch_size: int) -> ComputedMaps:
    """Every method's maps of every image and the logits, computed in batches."""
    maps: dict[str, list] = {m: [] for m in methods}
    cells: dict[str, list] = {m: [] for m in methods}
    logits = []
    for chunk in tqdm(list(batches(images, batch_size)), desc="saliency", unit="batch"):
        passes = [predictor.saliency(chunk, method) for method in methods]
        for method, result in zip(methods, passes, strict=True):
            maps[method].append(result.maps)
            cells[method].append(_cells(result.raw, result.maps))
        logits.append(passes[0].logits)  # every method runs the same network
    return ComputedMaps({m: np.concatenate(v) for m, v in maps.items()}, np.concatenate(logits),
                        {m: np.concatenate(v) for m, v in cells.items()})


def _cells(raw: np.ndarray | None, maps: np.ndarray) -> np.ndarray:
    if raw is not None:
        return raw
    n, height, width = maps.shape
    return maps.reshape(n, height // CAM_STRIDE, CAM_STRIDE, width // CAM_STRIDE, CAM_STRIDE).mean(axis=(2, 4))


def random_maps(n: int, seed: int, size: int = 224, alignment: str = "receptive-field") -> np.ndarray:
    """Uniform random maps at the CAM's own resolution (size / CAM_STRIDE cells a side), upsampled like a CAM: a
    fair chance level."""
    cells = size // CAM_STRIDE
    generator = torch.Generator().manual_seed(seed)
    return upsample_and_normalize(torch.rand(n, cells, cells, generator=generator), (size, size), alignment).numpy()


def randomized_predictor(predictor: Predictor, seed: int) -> Predictor:
    """A copy whose layer4 and fc are re-initialised (seeded): what the maps look like without learning."""
    net = copy.deepcopy(predictor.net).cpu()
    torch.manual_seed(seed)
    for module in list(net.feature_map[7].modules()) + [net.fc]:
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    return Predictor(net, predictor.normalization, threshold=predictor.threshold, metadata=predictor.metadata,
                     device=str(predictor.device), alignment=predictor.alignment, contract=predictor.contract)


def randomization_check(predictor: Predictor, images, methods, config: LocalizeConfig,
                        original: dict[str, np.ndarray] | None = None) -> dict:
    """Spearman correlation, per image at the maps' own cell resolution, between the trained model's maps and
    those of the same model with layer4 and fc re-initialised; a faithful method's maps must change.
    original: the trained model's cell maps when the caller has them already (compute_maps' cells)."""
    if original is None:
        original = compute_maps(predictor, images, list(methods), config.batch_size).cells
    randomized = compute_maps(randomized_predictor(predictor, config.seed), images, list(methods),
                              config.batch_size).cells
    result = {}
    for method in methods:
        pairs = zip(original[method], randomized[method], strict=True)
        correlation = float(np.mean([rank_correlation(a, b) for a, b in pairs]))
        result[method] = {"mean_rank_correlation": correlation, "passed": correlation < RANDOMIZATION_MAX_CORRELATION}
    return result


@dataclass
class MapAssessment:
    """What assess_maps computed: localization.json's content and what the files and figures are drawn from."""
    result: dict
    files: list[str]
    boxes: list[list]
    images: list[np.ndarray]
    maps: dict[str, np.ndarray]  # method -> (N, S, S)
    per_image: dict[str, list[dict]]  # method -> score_image results
    probabilities: np.ndarray


def _with_cis(summary: dict, values: dict[str, np.ndarray], groups: np.ndarray, boot: Bootstrap) -> dict:
    intervals = {k: bootstrap_mean_ci(v, groups, boot) for k, v in values.items()}
    summary["ci95"] = {k: interval["ci95"] for k, interval in intervals.items()}
    summary["pointing_game_ci"] = intervals["pointing_game"]  # with its method and resamples
    return summary


def assess_maps(predictor: Predictor, data_dir: Path, split: str, config: LocalizeConfig) -> MapAssessment:
    """Every map of every method and baseline on the split's boxed images: localisation scores with patient-level
    CIs, each method's margin over the box prior, and (config.faithfulness) deletion, insertion and ROAD."""
    all_boxes = load_boxes(data_dir)
    files, boxes = _boxed_files(all_boxes, data_dir, split)
    if config.max_images is not None and len(files) > config.max_images:  # a seeded sample, in file order
        keep = sorted(np.random.default_rng(config.seed).choice(len(files), config.max_images, replace=False))
        files, boxes = [files[i] for i in keep], [boxes[i] for i in keep]
    images = [load_file(data_dir / f) for f in files]
    maps, logits, cells = compute_maps(predictor, images, config.methods, config.batch_size)
    probabilities = predictor.probabilities(logits)
    cutoff = predictor.threshold
    size = images[0].shape[-1]
    baselines = {"random": random_maps(len(images), config.seed, size, alignment=predictor.alignment),
                 "centre": np.repeat(centre_prior((size, size))[None], len(images), axis=0)}
    prior = box_prior(all_boxes, size)
    if prior is not None:
        baselines["box_prior"] = np.repeat(prior[None], len(images), axis=0)
    groups = np.asarray(manifest_patients(data_dir, files))
    boot = Bootstrap(1000, config.seed)
    per_image, values, summaries = {}, {}, {}
    for name, stack in {**maps, **baselines}.items():
        per_image[name] = score_images(stack, boxes, probabilities, cutoff)
        values[name] = per_image_values(per_image[name])
        summaries[name] = _with_cis(summarize(per_image[name]), values[name], groups, boot)
    scores = {m: summaries[m] for m in maps}
    for method, summary in scores.items():
        if "box_prior" in values:  # paired per image: the same images, the method's score minus the prior's
            summary["margin_over_box_prior"] = {
                k: {"mean": float(np.mean(v - values["box_prior"][k])),
                    "ci95": bootstrap_mean_ci(v - values["box_prior"][k], groups, boot)["ci95"]}
                for k, v in values[method].items()}
    main = scores.get("cam") or next(iter(scores.values()))
    box_loss_weight = predictor.metadata.get("config", {}).get("box_loss_weight", 0.0)
    result = {
        "n_images": len(files), "split": split,
        # what the scores may mean: boxes of images the model (or its box guidance) was trained on, or not
        "includes_training_boxes": split in ("train", "all"), "method": "cam" if "cam" in scores else config.methods[0],
        "pointing_game": main["pointing_game"], "mean_iou": main["mean_iou"],
        "baseline_random": summaries["random"], "baseline_centre": summaries["centre"],
        # None when the training split has no boxes (the prior is the mean training-box mask)
        "baseline_box_prior": summaries.get("box_prior"),
        "chexlocalize_probability_cutoff": cutoff,
        "methods": scores, "config": asdict(config),
        # > 0: the model was trained with box guidance (on its training split's boxes, never these);
        # 0: from labels alone, so these scores measure weakly supervised localisation
        "box_loss_weight": box_loss_weight,
        "data_fingerprint": read_fingerprint(data_dir), "versions": package_versions(),
    }
    if config.faithfulness:
        result["faithfulness"] = faithfulness_summary(predictor, images, {**maps, **baselines}, config, groups)
    if config.randomize_check:
        result["randomization_check"] = randomization_check(predictor, images, list(maps), config, cells)
    return MapAssessment(result, files, boxes, images, maps, per_image, probabilities)


def _which_probability(predictor: Predictor, by_view: bool) -> str:
    calibration = predictor.calibration
    if calibration == Calibration():
        return "the raw sigmoid (the checkpoint is not calibrated)"
    overall = (f"calibrated (temperature {calibration.temperature:.3f}, intercept "
               f"{calibration.intercept + calibration.prevalence_shift:+.3f})")
    if not predictor.calibrations_by_view:
        return f"{overall}, as predict reports it"
    if by_view:
        views = ", ".join(predictor.calibrations_by_view)
        return f"{overall}, or the calibration of each film's view ({views}), as predict reports it"
    return f"{overall}: the overall calibration, as predict reports it for a film of unknown view"


def faithfulness_summary(predictor: Predictor, images: list[np.ndarray], named_maps: dict[str, np.ndarray],
                         config: LocalizeConfig, groups: np.ndarray, views: list[str] | None = None) -> dict:
    """Deletion and insertion areas (logit and probability) and ROAD MoRF / LeRF for every map, each with a
    patient-level CI, plus the mean curves; timed. The logit and probability are the calibrated ones where the
    checkpoint has a calibration (the probability the user sees), and the summary says which. `views`: each
    image's view, for the calibration predict gives a film of that view (without them, the overall one, as for a
    prepared file or a film of unknown view)."""
    start = time.perf_counter()
    image_views = views or [""] * len(images)

    def score(batch: np.ndarray) -> np.ndarray:  # every call scores all the images, in their order
        raw = np.concatenate([predictor.features(list(chunk))[0] for chunk in batches(batch, config.batch_size)])
        return apply_by_view(raw, image_views, predictor.calibration, predictor.calibrations_by_view)[:, None]

    stack = np.stack(images)
    boot = Bootstrap(1000, config.seed)
    out, areas = {}, {}
    for name, maps in tqdm(named_maps.items(), desc="faithfulness", unit="map"):
        curves = {}
        for kind in ("deletion", "insertion"):
            curves[kind] = perturbation_curves(score, stack, maps, kind, config.replacement,
                                               predictor.normalization.mean)
        if config.road:
            curves["road_morf"] = road_curves(score, stack, maps, "morf", seed=config.seed)
            curves["road_lerf"] = road_curves(score, stack, maps, "lerf", seed=config.seed)
        areas[name] = {kind: curve.area("probability") for kind, curve in curves.items()}
        out[name] = {kind: _curve_summary(curve, groups, boot) for kind, curve in curves.items()}
    if "random" in areas:  # paired per image: each map's area minus the random map's, on the same images
        for name in areas.keys() - {"random"}:
            out[name]["minus_random"] = {}
            for kind, area in areas[name].items():
                difference = area - areas["random"][kind]
                out[name]["minus_random"][kind] = {"probability": float(np.mean(difference)),
                                                   "ci95": bootstrap_mean_ci(difference, groups, boot)["ci95"]}
    # the mean probability of the images as they are, and with every pixel replaced: where a deletion curve starts
    # and ends whatever the map (above the start: the replacement itself reads as pneumonia)
    ends = next(iter(out.values()), {}).get("deletion", {}).get("curve", {}).get("probability") or [None]
    if config.replacement == "blur":
        replacement = f"Gaussian blur, sigma {BLUR_SIGMA:g} px"
    else:
        replacement = f"the normalisation mean {predictor.normalization.mean:.4f}"
    return {"probability": _which_probability(predictor, views is not None),
            "original_probability": ends[0], "all_replaced_probability": ends[-1],
            "replacement": config.replacement, "replacement_value": replacement,
            "steps": STEPS, "road_percentages": list(ROAD_PERCENTAGES) if config.road else None,
            "road_imputation": f"noisy linear (8 neighbours, noise sd {ROAD_NOISE})" if config.road else None,
            "areas": "mean over images of the area under each image's curve, normalised by the x-range",
            "n_images": len(images), "maps": out, "wall_time_s": round(time.perf_counter() - start, 1)}


def _curve_summary(curve, groups: np.ndarray, boot: Bootstrap) -> dict:
    """One kind of curve of one map: the mean area of the logit and the probability, each with its CI, and the
    mean curve."""
    summary = {}
    for target in TARGETS:
        area = curve.area(target)
        summary[target] = float(area.mean())
        summary[f"{target}_ci95"] = bootstrap_mean_ci(area, groups, boot)["ci95"]
    summary["curve"] = {"fractions": curve.fractions.tolist(), "logit": curve.logit.mean(axis=0).tolist(),
                        "probability": curve.probability.mean(axis=0).tolist()}
    return summary
