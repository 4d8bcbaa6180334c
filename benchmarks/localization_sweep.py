"""How the demo's training recipe changes where CAM points: train the demo model under several recipes
and seeds, and report the pointing game (issue 6's check) and validation AUROC of each.

The phantom data is made once per (image count, data seed) and shared by the recipes that use it.
Everything else is the demo's pipeline (prepare -> fit -> evaluate -> localize on the validation split).
On 2 CPU cores each run takes ~6 minutes; on one GPU a few seconds.

usage: python benchmarks/localization_sweep.py [--recipes base,aug,...] [--seeds 0,1] [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from pneumocam.commands.demo import stage_configs
from pneumocam.commands.evaluate import evaluate
from pneumocam.commands.localize import localize
from pneumocam.commands.prepare import prepare
from pneumocam.commands.train import fit
from pneumocam.config import DemoConfig, EvalConfig, LocalizeConfig
from pneumocam.data import synthesize

# recipe name -> (images, changes to the demo's TrainConfig taken from labels only, box_loss_weight 0;
# the demo itself is "box0.1")
RECIPES = {
    "base": (800, {}),
    "aug": (800, {"augment": "original"}),
    "ep16": (800, {"epochs": 16}),
    "aug_ep16": (800, {"augment": "original", "epochs": 16}),
    "n1600": (1600, {}),
    "n1600_aug": (1600, {"augment": "original"}),
    "n1600_aug_ep16": (1600, {"augment": "original", "epochs": 16}),
    "lr1e-3": (800, {"lr": 1e-3}),
    "shift": (800, {"augment": "shift"}),
    "shift_ep12": (800, {"augment": "shift", "epochs": 12}),
    "box0.1": (800, {"box_loss_weight": 0.1}),
    "box0.3": (800, {"box_loss_weight": 0.3}),
    "box1": (800, {"box_loss_weight": 1.0}),
    "box3": (800, {"box_loss_weight": 3.0}),
    "shift_box1": (800, {"augment": "shift", "box_loss_weight": 1.0}),
}


def run_one(work: Path, recipe: str, seed: int, device: str) -> dict:
    n_images, changes = RECIPES[recipe]
    synth, prep, train = stage_configs(DemoConfig(n_images=n_images))
    data = work / f"data-{n_images}"
    if not (data / "stats.json").exists():
        synthesize(work / f"source-{n_images}", synth)
        prepare(work / f"source-{n_images}", data, prep)
    run = work / f"run-{recipe}-{seed}"
    start = time.perf_counter()
    fitted = fit(data, run, replace(train, box_loss_weight=0.0, seed=seed, **changes))
    train_s = time.perf_counter() - start
    metrics = evaluate(fitted.best_checkpoint, data, run / "eval", EvalConfig(bootstrap=0, report=False,
                                                                               device=device))
    loc = localize(fitted.best_checkpoint, data, run / "localize", LocalizeConfig(split="val", device=device))
    return {"recipe": recipe, "seed": seed, "n_images": n_images, "train_s": round(train_s, 1),
            "val_auroc": metrics["auroc"], "val_accuracy": metrics["accuracy"],
            "pointing_game": {m: v["pointing_game"] for m, v in loc["methods"].items()},
            "cam_peak_distance_px": loc["methods"]["cam"]["peak_distance_px"],
            "random_pointing_game": loc["baseline_random"]["pointing_game"], "n_boxed": loc["n_images"],
            "grid": str(run / "localize" / "localization_grid.png")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="base,aug", help=f"comma-separated, from {', '.join(RECIPES)}")
    parser.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    work = args.work or Path(tempfile.mkdtemp(prefix="pneumocam-loc-sweep-"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    print(f"{'recipe':<18}{'seed':>5}{'train s':>9}{'AUROC':>8}{'CAM':>7}{'GradCAM':>9}{'GC++':>7}{'random':>8}"
          f"{'CAM miss px (median, p90)':>28}")
    for recipe in args.recipes.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            r = run_one(work, recipe, seed, device)
            results.append(r)
            pg = r["pointing_game"]
            print(f"{recipe:<18}{seed:>5}{r['train_s']:>9.1f}{r['val_auroc']:>8.4f}{pg['cam']:>7.3f}"
                  f"{pg['gradcam']:>9.3f}{pg['gradcam++']:>7.3f}{r['random_pointing_game']:>8.3f}"
                  f"{r['cam_peak_distance_px']['median']:>14.1f}{r['cam_peak_distance_px']['p90']:>14.1f}", flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
