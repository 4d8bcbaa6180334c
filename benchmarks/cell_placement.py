"""Where do the 7x7 CAM cells sit in the image? Three placements scored against real boxes.

- receptive-field: cell p at pixel 32 p (pneumocam's default, from the ResNet's stride arithmetic);
- block-centre: cell p at pixel 32 p + 16 (cv2.resize, F.interpolate(align_corners=False), pytorch-grad-cam);
- gradient-centroid: cell (i, j) at the centroid of |d cell / d input| measured on this model, averaged over
  images (rows over columns and images, columns likewise), on images kept apart from the scored ones.
Each placement upsamples the same raw maps; the scores (pointing game, IoU at 0.5, pixel AUPRC, with 95% CIs
from a cluster bootstrap over patients) come from pneumocam.explain.localization on the boxed images of a prepared
data set. Prints a table and writes JSON with --out.

usage: python benchmarks/cell_placement.py PREPARED_DATA [--checkpoint pneumocam-cxr] [--images 300]
       [--centroid-images 24] [--out cell_placement.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import map_coordinates

from pneumocam.data import collate_images, load_boxes, load_file, manifest_patients
from pneumocam.deploy import Predictor
from pneumocam.evaluation import Bootstrap, bootstrap_mean_ci
from pneumocam.explain import normalize_maps, per_image_values, score_images, summarize, upsample_and_normalize


def gradient_centroids(predictor: Predictor, images: list[np.ndarray], batch: int = 8) -> np.ndarray:
    """(7, 7, 2) mean (row, column) of each cell's input-gradient centroid over `images`."""
    net = predictor.net.eval()
    weight = net.fc.weight.detach().reshape(-1)
    rows, cols = np.mgrid[0:224, 0:224]
    total, count = np.zeros((7, 7, 2)), 0
    for start in range(0, len(images), batch):
        x = collate_images(images[start : start + batch], predictor.normalization).requires_grad_(True)
        _, features = net(x)
        cells = torch.einsum("c,bchw->bhw", weight, features)
        for i in range(7):
            for j in range(7):
                (grad,) = torch.autograd.grad(cells[:, i, j].sum(), x, retain_graph=True)
                mass = grad.abs()[:, 0].numpy()  # (B, 224, 224)
                mass /= mass.sum(axis=(1, 2), keepdims=True)
                total[i, j] += [(mass * rows).sum(), (mass * cols).sum()]
        count += x.shape[0]
    return total / count


def measured_upsample(raw: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """(N, 7, 7) -> (N, 224, 224) min-max maps, cell (i, j) placed at (row_i, column_j) of the measured
    centroids, bilinear between cells, the edge value kept beyond the outer ones."""
    row_at, col_at = centroids[..., 0].mean(axis=1), centroids[..., 1].mean(axis=0)
    pixel = np.arange(224)
    cell_row, cell_col = np.interp(pixel, row_at, np.arange(7)), np.interp(pixel, col_at, np.arange(7))
    grid = np.meshgrid(cell_row, cell_col, indexing="ij")
    normalized = normalize_maps(torch.from_numpy(raw)).numpy()
    return np.stack([map_coordinates(m, grid, order=1, mode="nearest") for m in normalized]).astype(np.float32)


def score(maps: np.ndarray, boxes, probabilities, groups, boot: Bootstrap) -> dict:
    per_image = score_images(maps, boxes, probabilities)
    values = per_image_values(per_image)
    summary = summarize(per_image)
    keys = {"pointing_game": "pointing_game", "mean_iou": "iou@0.5", "pixel_auprc": "pixel_auprc"}
    return {key: {"mean": summary[key], "ci95": bootstrap_mean_ci(values[name], groups, boot)["ci95"]}
            for key, name in keys.items()}


def run(data_dir: Path, checkpoint: str, n_images: int, n_centroid: int, seed: int) -> dict:
    boxes_by_file = load_boxes(data_dir)
    files = sorted(boxes_by_file)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(files))
    scored = sorted(files[i] for i in order[:n_images])
    apart = [files[i] for i in order[n_images : n_images + n_centroid]]
    predictor = Predictor.from_checkpoint(checkpoint)
    started = time.perf_counter()
    centroids = gradient_centroids(predictor, [load_file(data_dir / f) for f in apart])
    centroid_s = time.perf_counter() - started
    images = [load_file(data_dir / f) for f in scored]
    logits, raw, *_ = predictor.forward(images)
    probabilities = predictor.probabilities(logits)
    boxes = [boxes_by_file[f] for f in scored]
    groups = np.asarray(manifest_patients(data_dir, scored))
    boot = Bootstrap(1000, seed)
    raw_t = torch.from_numpy(raw)
    placements = {
        "receptive-field": upsample_and_normalize(raw_t, alignment="receptive-field").numpy(),
        "block-centre": upsample_and_normalize(raw_t, alignment="block-centre").numpy(),
        "gradient-centroid": measured_upsample(raw, centroids),
    }
    scores = {name: score(maps, boxes, probabilities, groups, boot) for name, maps in placements.items()}
    return {"data": str(data_dir.name), "checkpoint": checkpoint, "n_scored": len(scored),
            "n_centroid_images": len(apart), "centroid_seconds": round(centroid_s, 1),
            "centroid_rows": centroids[..., 0].mean(axis=1).round(1).tolist(),
            "centroid_cols": centroids[..., 1].mean(axis=0).round(1).tolist(),
            "receptive_field_at": [32 * p for p in range(7)], "block_centre_at": [32 * p + 16 for p in range(7)],
            "scores": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a prepared data folder with boxes.csv")
    parser.add_argument("--checkpoint", default="pneumocam-cxr")
    parser.add_argument("--images", type=int, default=300, help="boxed images scored (a seeded sample)")
    parser.add_argument("--centroid-images", type=int, default=24, help="other boxed images the centroids use")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    result = run(args.data, args.checkpoint, args.images, args.centroid_images, args.seed)
    print(f"{result['n_scored']} boxed images of {result['data']}; gradient centroids from "
          f"{result['n_centroid_images']} others: rows {result['centroid_rows']}, columns {result['centroid_cols']}")
    print(f"{'placement':<20}{'pointing game':>26}{'IoU at 0.5':>26}{'pixel AUPRC':>26}")
    for name, s in result["scores"].items():
        cells = [f"{s[k]['mean']:.3f} [{s[k]['ci95'][0]:.3f}, {s[k]['ci95'][1]:.3f}]"
                 for k in ("pointing_game", "mean_iou", "pixel_auprc")]
        print(f"{name:<20}" + "".join(f"{c:>26}" for c in cells))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
