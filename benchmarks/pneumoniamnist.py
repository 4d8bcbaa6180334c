"""PneumoniaMNIST at 224 px: prepare the real npz, train pneumocam, report validation AUROC/accuracy
next to the MedMNIST v2 anchors (ResNet-18 at 224, *test* split: AUC 0.956, ACC 0.864).

The npz holds train (4,708) and val (524); its test split is kept elsewhere for independent evaluation,
so this reports validation numbers only. Target (issue 4): val AUROC >= 0.97.

usage: python benchmarks/pneumoniamnist.py [--epochs 4] [--batch-size 32] [--pretrained none|imagenet|PATH]
                                           [--npz ../shared/data/pneumoniamnist/pneumoniamnist_trainval.npz]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

from pneumocam.commands.evaluate import evaluate
from pneumocam.commands.prepare import prepare
from pneumocam.commands.train import fit
from pneumocam.config import EvalConfig, PrepareConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_NPZ = ROOT.parent / "shared" / "data" / "pneumoniamnist" / "pneumoniamnist_trainval.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--work", type=Path, default=Path("pneumoniamnist-bench"))
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--augment", default="original", choices=("original", "none"))
    parser.add_argument("--pretrained", default="none")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.npz.exists():
        raise SystemExit(f"{args.npz}: not found (pass --npz)")
    start = time.perf_counter()
    prepare(args.npz, args.work / "data", PrepareConfig(seed=args.seed))
    prepared_s = time.perf_counter() - start
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, augment=args.augment,
                         pretrained=args.pretrained, data_stats=True, seed=args.seed, monitor="val_loss")
    start = time.perf_counter()
    result = fit(args.work / "data", args.work / "run", config)
    trained_s = time.perf_counter() - start
    metrics = evaluate(result.best_checkpoint, args.work / "data", args.work / "eval",
                       EvalConfig(split="val", bootstrap=1000, report=False))
    ci = metrics["ci95"]
    summary = {"val_auroc": metrics["auroc"], "val_auroc_ci95": ci["auroc"], "val_accuracy": metrics["accuracy"],
               "val_accuracy_ci95": ci["accuracy"], "n_val": metrics["n"], "train_config": asdict(config),
               "prepare_s": round(prepared_s, 1), "train_s": round(trained_s, 1), "best_checkpoint":
               str(result.best_checkpoint)}
    (args.work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nPneumoniaMNIST, 224 px, {args.epochs} epochs, batch {args.batch_size}, lr {args.lr}, augment "
          f"{args.augment}, pretrained {args.pretrained}; training took {trained_s / 60:.1f} min\n")
    print(f"{'':<38}{'AUROC':>16}{'accuracy':>20}")
    print(f"{'pneumocam, val (n=' + str(metrics['n']) + ')':<38}{metrics['auroc']:>8.4f} "
          f"[{ci['auroc'][0]:.3f}, {ci['auroc'][1]:.3f}]{metrics['accuracy']:>10.4f} "
          f"[{ci['accuracy'][0]:.3f}, {ci['accuracy'][1]:.3f}]")
    print(f"{'MedMNIST v2 ResNet-18 (224), test':<38}{0.956:>8.3f}{'':>8}{0.864:>10.3f}")
    print(f"{'MedMNIST v2 ResNet-18 (28), test':<38}{0.944:>8.3f}{'':>8}{0.854:>10.3f}")
    print(f"\ntarget: val AUROC >= 0.97 -> {'met' if metrics['auroc'] >= 0.97 else 'NOT met'}")


if __name__ == "__main__":
    main()
