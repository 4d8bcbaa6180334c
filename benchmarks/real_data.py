"""Real radiographs, end to end: the recipes behind the bundled model, with the commands a user would type.

Recipes (each a row of the table; every command is printed before it runs, so each can be rerun by hand):
  kermany             Kermany pediatric train split (5,216), validation carved by patient, from scratch
  rsna-labels         rsna_1000 (800 train / 200 val, grouped by patient), from scratch, labels only
  rsna-box            the same with box guidance (--box-loss-weight)
  rsna-kermany-labels rsna_1000 starting from the Kermany model (children -> adults), labels only
  rsna-kermany-box    the same with box guidance
  joint               both sets in one (prepare kermany224 rsna_1000), starting from rsna-kermany-box: the
                      bundled model pneumocam-cxr (a model fine-tuned on RSNA alone forgets the children)
Every model is evaluated on both validation splits (AUROC, accuracy, sensitivity, specificity with
bootstrap 95% CIs); RSNA models are also scored against the validation boxes (pointing game, hit rate at
IoBB 0.25, IoU at 0.5) beside the random-map, centre-prior and box-prior baselines.

Steps whose outputs exist are skipped (a finished training run is one whose last.ckpt reached the last
epoch; an unfinished one is resumed), so the script can be stopped and rerun. Results: WORK/real_data.json
and the table on stdout. Validation splits only: the held-out test sets are measured elsewhere.

usage: python benchmarks/real_data.py [--work real-data-bench] [--recipes kermany rsna-box ...]
                                      [--shared ../shared/data] [--bundle src/pneumocam/weights/pneumocam-cxr.pt]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = Path(os.environ.get("PNEUMOCAM_SHARED_DATA", ROOT.parent / "shared" / "data"))

COMMON = ["--pretrained", "none", "--augment", "shift", "--pos-weight", "1", "--no-data-stats",
          "--batch-size", "32", "--seed", "0"]
BOX_WEIGHT = "0.5"
RECIPES = {
    # name: (data set, extra train arguments, epochs, the recipe it starts from)
    "kermany": ("kermany", ["--lr", "1e-3"], 5, None),
    "rsna-labels": ("rsna", ["--lr", "1e-3"], 10, None),
    "rsna-box": ("rsna", ["--lr", "1e-3", "--box-loss-weight", BOX_WEIGHT], 10, None),
    "rsna-kermany-labels": ("rsna", ["--lr", "5e-4"], 10, "kermany"),
    "rsna-kermany-box": ("rsna", ["--lr", "5e-4", "--box-loss-weight", BOX_WEIGHT], 10, "kermany"),
    "joint": ("joint", ["--lr", "2e-4", "--box-loss-weight", BOX_WEIGHT], 2, "rsna-kermany-box"),
}
BUNDLED_RECIPE = "joint"
SOURCES = {"kermany": ["kermany224"], "rsna": ["rsna_1000"], "joint": ["kermany224", "rsna_1000"]}
EVALUATED_ON = ("kermany", "rsna")


def run(command: list[str]) -> float:
    print("$ " + shlex.join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start


def prepared(work: Path, shared: Path, name: str) -> Path:
    out = work / name
    if not (out / "stats.json").exists():
        run(["pneumocam", "prepare", *(str(shared / s) for s in SOURCES[name]), str(out), "--seed", "0"])
    return out


def train_command(work: Path, recipe: str) -> list[str]:
    data, extra, epochs, parent = RECIPES[recipe]
    command = ["pneumocam", "train", str(work / data), str(work / "runs" / recipe), *COMMON, *extra,
               "--epochs", str(epochs)]
    if parent:
        command[command.index("--pretrained") + 1] = str(work / "runs" / parent / "checkpoints" / "best.ckpt")
    return command


def lineage(recipe: str) -> list[str]:
    """The recipes a recipe starts from, oldest first, ending with itself."""
    chain = [recipe]
    while RECIPES[chain[0]][3]:
        chain.insert(0, RECIPES[chain[0]][3])
    return chain


def finished_epochs(run_dir: Path) -> int:
    last = run_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return 0
    return int(torch.load(last, map_location="cpu", weights_only=True)["pneumocam"]["epoch"]) + 1


def trained(work: Path, recipe: str) -> dict:
    run_dir = work / "runs" / recipe
    epochs = RECIPES[recipe][2]
    done = finished_epochs(run_dir)
    if done < epochs:
        run(train_command(work, recipe) + (["--resume"] if done else []))
    config = json.loads((run_dir / "config.json").read_text())
    # wall time of the training itself, from the files it wrote first and last (also for a run made earlier)
    wall = (run_dir / "checkpoints" / "last.ckpt").stat().st_mtime - (run_dir / "config.json").stat().st_mtime
    return {"checkpoint": str(run_dir / "checkpoints" / "best.ckpt"), "epochs": epochs,
            "batch_size": config["config"]["batch_size"], "train_wall_s": round(wall), "command":
            shlex.join(train_command(work, recipe))}


def evaluated(checkpoint: str, data: Path, out: Path, *extra: str) -> dict:
    """The headline metrics of `pneumocam evaluate` on the val split (run unless OUT has them already)."""
    if not (out / "metrics.json").exists():
        run(["pneumocam", "evaluate", checkpoint, str(data), str(out), "--split", "val", "--no-report", *extra])
    metrics = json.loads((out / "metrics.json").read_text())
    keys = ("auroc", "accuracy", "recall", "specificity")
    return {"n": metrics["n"], **{k: metrics[k] for k in keys}, "ci95": {k: metrics["ci95"][k] for k in keys}}


def localized(checkpoint: str, data: Path, out: Path) -> dict:
    if not (out / "localization.json").exists():
        run(["pneumocam", "localize", checkpoint, str(data), str(out), "--split", "val", "--methods", "cam"])
    result = json.loads((out / "localization.json").read_text())

    def brief(scores: dict | None) -> dict | None:
        return scores and {"pointing_game": scores["pointing_game"], "hit_iobb_0.25": scores["hit_rate_iobb"]["0.25"],
                           "iou_0.5": scores["mean_iou"]}

    return {"n_images": result["n_images"], "cam": brief(result["methods"]["cam"]),
            "random": brief(result["baseline_random"]), "centre": brief(result["baseline_centre"]),
            "box_prior": brief(result["baseline_box_prior"])}


def measure(work: Path, name: str, checkpoint: str, data_sets: dict[str, Path]) -> dict:
    row = {"val": {source: evaluated(checkpoint, data_sets[source], work / "eval" / name / source)
                   for source in EVALUATED_ON}}
    row["localization"] = localized(checkpoint, data_sets["rsna"], work / "eval" / name / "localize")
    return row


def _ci(metric: dict, key: str) -> str:
    low, high = metric["ci95"][key]
    return f"{metric[key]:.3f} [{low:.3f}, {high:.3f}]"


def print_table(results: dict) -> None:
    print(f"\n{'recipe':<22}{'epochs':>7}{'train min':>10}  {'Kermany val AUROC':<24}{'RSNA val AUROC':<24}"
          f"{'RSNA sens / spec':<14}  {'pointing (random, centre, box prior)'}")
    for name, row in results["rows"].items():
        k, r, loc = row["val"]["kermany"], row["val"]["rsna"], row["localization"]
        baselines = ", ".join(f"{loc[b]['pointing_game']:.2f}" for b in ("random", "centre", "box_prior") if loc[b])
        train_min = f"{row['train_wall_s'] / 60:.1f}" if "train_wall_s" in row else "-"
        print(f"{name:<22}{row.get('epochs', '-'):>7}{train_min:>10}  {_ci(k, 'auroc'):<24}{_ci(r, 'auroc'):<24}"
              f"{r['recall']:.2f} / {r['specificity']:.2f}    {loc['cam']['pointing_game']:.3f} ({baselines})")
    print(f"\nmachine: {results['machine']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("real-data-bench"))
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--bundle", type=Path, default=None,
                        help=f"also write the {BUNDLED_RECIPE} model as a bundled model file here and measure it")
    args = parser.parse_args()
    for source in {s for names in SOURCES.values() for s in names}:
        if not (args.shared / source).is_dir():
            raise SystemExit(f"{args.shared / source}: not found (pass --shared)")
    work = args.work
    needed = {RECIPES[r][0] for r in args.recipes} | set(EVALUATED_ON)
    data_sets = {name: prepared(work, args.shared, name) for name in SOURCES if name in needed}
    results = {"machine": f"{platform.node()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
                          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}",
               "rows": {}}
    previous = work / "real_data.json"
    if previous.exists():  # rows of recipes measured by an earlier run are kept beside this run's
        results["rows"] = json.loads(previous.read_text())["rows"]
    for recipe in args.recipes:
        for ancestor in lineage(recipe)[:-1]:  # each model it starts from, trained where it is not yet
            if finished_epochs(work / "runs" / ancestor) < RECIPES[ancestor][2]:
                if RECIPES[ancestor][0] not in data_sets:
                    data_sets[RECIPES[ancestor][0]] = prepared(work, args.shared, RECIPES[ancestor][0])
                trained(work, ancestor)
        facts = trained(work, recipe)
        results["rows"][recipe] = {**facts, **measure(work, recipe, facts["checkpoint"], data_sets)}
        (work / "real_data.json").write_text(json.dumps(results, indent=2))
    if args.bundle:
        from pneumocam.model import bundle

        source = results["rows"].get(BUNDLED_RECIPE) or {"checkpoint": str(work / "runs" / BUNDLED_RECIPE /
                                                                          "checkpoints" / "best.ckpt")}
        card = {"recipe": BUNDLED_RECIPE, "train_command": shlex.join(train_command(work, BUNDLED_RECIPE)),
                "lineage": {name: shlex.join(train_command(work, name)) for name in lineage(BUNDLED_RECIPE)},
                "prepare_commands": {name: shlex.join(["pneumocam", "prepare", *(str(args.shared / s) for s in
                                                                                  SOURCES[name]), str(work / name),
                                                        "--seed", "0"]) for name in SOURCES}}
        bundle(source["checkpoint"], args.bundle, card)
        row = {"epochs": "-", **measure(work, "bundled", str(args.bundle), data_sets)}
        # the same float16 weights again, now with the card's numbers, which were measured on exactly them
        card.update(validation=row["val"], localization=row["localization"],
                    measured_on=results["machine"])
        bundle(source["checkpoint"], args.bundle, card)
        results["rows"]["bundled (float16)"] = row
        (work / "real_data.json").write_text(json.dumps(results, indent=2))
    print_table(results)
    print(f"wrote {work / 'real_data.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
