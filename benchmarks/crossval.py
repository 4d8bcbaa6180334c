"""Adult recipes compared by patient-grouped k-fold cross-validation on rsna_1000, every recipe on the same folds.

Why: a validation split carved once from 1,000 adults was optimistic by 0.02 AUROC against independent images,
and a split with easy negatives by far more. Here every rsna_1000 patient is scored exactly once, by a model
that never saw them, on folds stratified by view x label; `rsna_covidx256` (its negatives are only "Normal")
and the children of `kermany224` only ever train.

Steps (each skipped when its output exists, so the script can be stopped and rerun; a fold is the unit):
  1. prepare  WORK/pool   kermany224 + rsna_covidx256 + rsna_1000 (each source split as if alone, seed 0)
              WORK/base-data  kermany224 + rsna_covidx256 (the same splits)
  2. base     `pneumocam train WORK/base-data WORK/runs/base` from scratch: a model that has never seen
              rsna_1000, so every fold may start from it; the other models of TRAINED_ONCE where a chosen
              recipe names or starts from them: base-long, base-longer, base-longest and base-20ep (the base
              trained 4, 8, 12 and 16 more epochs) and kermany-only
              (WORK/kermany-data: kermany224 alone, the same split; the children's yardstick)
  3. folds    pneumocam.data.assign_folds over the rsna_1000 images (k folds, grouped by patient,
              stratified by view x label); WORK/folds.json
  4. recipes  per fold: a fold folder (pneumocam.data.write_fold: that fold as val, the other folds plus a seeded
              share of each other source as train), `pneumocam train` from the base model, the last epoch's
              checkpoint (no checkpoint chosen on the scored fold), its predictions on the fold and on the
              Kermany validation split -> WORK/cv/RECIPE/foldF.json
Per recipe and fold: AUROC overall and within AP and PA films, ECE (raw, and once calibrated on the fold as calibrate
would, with one calibration or one per view, cross-fitted), AUROC on the children's validation split;
operating points chosen by calibrate's rules on the other folds' out-of-fold predictions (one overall threshold,
or one per view) and applied to this fold: sensitivity on PA films, specificity overall, the share of RSNA's
"No Lung Opacity / Not Normal" films called pneumonia. Mean, sd, min, max over folds: WORK/crossval.json and
the table on stdout; over all folds at once (each image scored by the network that never saw it): the pooled
AUROC and the pointing game's margin over the box prior with its patient-level CI.

usage: python benchmarks/crossval.py [--work cv-bench] [--k 3] [--recipes base adult adult-view] [--shared DIR]
       python benchmarks/crossval.py --learning-curve adult     (25%, 50%, 100% of each fold's adult images)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from real_data import finished_epochs, run  # this folder's script: the same command runner and resume check

from pneumocam.config import IMAGE_SIZE
from pneumocam.data import assign_folds, data_contract, manifest_rows, summarize_folds, write_fold
from pneumocam.evaluation import calls_by_view, choose_threshold, expected_calibration_error, fast_auroc
from pneumocam.files import read_csv, write_csv
from pneumocam.model import cross_fitted_probabilities

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = Path(os.environ.get("PNEUMOCAM_SHARED_DATA", ROOT.parent / "shared" / "data"))
ADULTS, EXTRA_ADULTS, CHILDREN = "rsna_1000", "rsna_covidx256", "kermany224"
POOL_SOURCES = [CHILDREN, EXTRA_ADULTS, ADULTS]
COMMON = ["--augment", "shift", "--pos-weight", "1", "--no-data-stats", "--batch-size", "32", "--seed", "0"]
BASE = ["--lr", "1e-3", "--box-loss-weight", "0.5", "--epochs", "4"]
# the children's yardstick: the same schedule from scratch on the Kermany training split alone (it has no boxes)
KERMANY_ONLY = ["--lr", "1e-3", "--epochs", "4"]
ADULT = ["--lr", "5e-4", "--box-loss-weight", "0.5"]  # every fine-tuning recipe starts from these
FINDING = [*ADULT, "--finding-loss-weight", "1"]
EMA = [*FINDING, "--ema-decay", "0.98"]  # the saved weights an average over about the last 50 of ~104 steps
# BatchNorm keeps normalising with the starting model's statistics (their scale and shift still learn)
EMA_BN = [*EMA, "--freeze-batchnorm"]
# training images per fold from the sources that only train (source balance, set explicitly)
SHARES = {CHILDREN: 500, EXTRA_ADULTS: 500}
# a trained-once model trained further on its own data: a second warm-up and cosine, 4 epochs
MORE_EPOCHS = [*ADULT, "--epochs", "4"]
# bfloat16 mixed precision: on CPUs with native bfloat16 (AVX512-BF16, AMX) a training step takes about half as long
BF16 = ["--precision", "bf16-mixed"]


@dataclass(frozen=True)
class TrainedOnce:
    """A model trained once, never on rsna_1000, so every fold may start from it or be scored by it: `arguments`
    on the prepared folder `data` (`pneumocam prepare` of `sources`), from the model `start` (None: from scratch)."""

    data: str
    sources: tuple[str, ...]
    arguments: list[str]
    start: str | None = None


TRAINED_ONCE = {
    "base": TrainedOnce("base-data", (CHILDREN, EXTRA_ADULTS), BASE),
    # the children's yardstick: split as in the pool (each source is split as if prepared alone)
    "kermany-only": TrainedOnce("kermany-data", (CHILDREN,), KERMANY_ONLY),
    # the longer schedule: the base model trained 4 more epochs on its own data (a second warm-up and cosine)
    "base-long": TrainedOnce("base-data", (CHILDREN, EXTRA_ADULTS), MORE_EPOCHS, start="base"),
    # and 4 more again (12 epochs in all): does the trend go on?
    "base-longer": TrainedOnce("base-data", (CHILDREN, EXTRA_ADULTS), MORE_EPOCHS, start="base-long"),
    # and 4 more again, twice (16 and 20 epochs in all)
    "base-longest": TrainedOnce("base-data", (CHILDREN, EXTRA_ADULTS), MORE_EPOCHS, start="base-longer"),
    "base-20ep": TrainedOnce("base-data", (CHILDREN, EXTRA_ADULTS), MORE_EPOCHS, start="base-longest"),
    # the base model's data from the children's yardstick instead of from scratch: every base trained on children
    # and adults together ranks the children below the yardstick (paired CI below 0), so start where they are best
    "kermany-base": TrainedOnce("base-data", (CHILDREN, EXTRA_ADULTS), MORE_EPOCHS, start="kermany-only"),
    # the base model with each film's exposure jittered too (gamma, contrast, brightness): AP and PA films differ
    # in exposure, a cue the label should not be learnt from
    "base-intensity": TrainedOnce("base-data", (CHILDREN, EXTRA_ADULTS), [*BASE, "--augment", "shift-intensity"]),
    # the shipped recipe's chain of base models again, every step in bfloat16 mixed precision
    "base-bf16": TrainedOnce("base-data", (CHILDREN, EXTRA_ADULTS), [*BASE, *BF16]),
    **{f"{name}-bf16": TrainedOnce("base-data", (CHILDREN, EXTRA_ADULTS), [*MORE_EPOCHS, *BF16], start=f"{start}-bf16")
       for name, start in (("base-long", "base"), ("base-longer", "base-long"), ("base-longest", "base-longer"))},
}


@dataclass(frozen=True)
class Recipe:
    """A fine-tuning recipe: `arguments` added to `pneumocam train` for `epochs`, from the model `start`, with
    `shares` of the training-only sources in each fold folder; `teacher`: a model trained once whose probabilities
    on the training children become --soft-labels (weight 0.5); `image_size`: the fold folders (and the scoring)
    come from a pool prepared at this side (WORK/pool<size>; the start model, trained at 224, is fine-tuned at
    it); `positives_only`: training-only sources whose share is drawn from their pneumonia images alone.
    `arguments` None: a model trained once, scored on every fold as it is."""

    arguments: list[str] | None
    epochs: int = 2
    start: str = "base"
    shares: dict[str, int] = field(default_factory=lambda: dict(SHARES))
    teacher: str | None = None
    image_size: int = IMAGE_SIZE
    positives_only: tuple[str, ...] = ()

    def train_arguments(self, work: Path) -> list[str]:
        soft = []
        if self.teacher:
            soft = ["--soft-labels", str(teacher_csv(work, self.teacher)), "--soft-label-weight", "0.5"]
        return ["--pretrained", str(model_path(work, self.start)), *self.arguments, *soft, "--epochs", str(self.epochs)]


RECIPES = {
    **{name: Recipe(None) for name in TRAINED_ONCE},  # each scored on every fold as it is
    "adult": Recipe(ADULT),
    "adult-view": Recipe([*ADULT, "--balance-by", "view"]),
    "adult-finding": Recipe(FINDING),
    "adult-finding-view": Recipe([*FINDING, "--balance-by", "view"]),
    "adult-finding-ema": Recipe(EMA),
    # the worst of view x label (AP/PA/unknown, pneumonia or not) weighs most in the loss
    "adult-finding-dro": Recipe([*FINDING, "--group-dro", "view"]),
    # the source balance: three times the children in each fold folder
    "adult-finding-ema-children": Recipe(EMA, shares={CHILDREN: 1500, EXTRA_ADULTS: 500}),
    # started from the children's yardstick instead of the base model
    "adult-finding-ema-kermany": Recipe(EMA, start="kermany-only"),
    # learning without forgetting: the children also learn the yardstick's probabilities
    "adult-finding-ema-lwf": Recipe(EMA, teacher="kermany-only"),
    # stronger geometry: the original augmentation adds a random resized crop (0.35-1) to the affine
    "adult-finding-ema-crop": Recipe([*EMA, "--augment", "original"]),
    # stronger intensity: each film's exposure jittered before the shift, in fine-tuning only, and throughout
    "adult-finding-ema-intensity": Recipe([*EMA, "--augment", "shift-intensity"]),
    "adult-finding-ema-intensity-base": Recipe([*EMA, "--augment", "shift-intensity"], start="base-intensity"),
    # a second seed of the first and its baseline: the seed moves a fold by as much as the jitter does
    "adult-finding-ema-seed1": Recipe([*EMA, "--seed", "1"]),
    "adult-finding-ema-intensity-seed1": Recipe([*EMA, "--augment", "shift-intensity", "--seed", "1"]),
    # the fifth build's recipe with the jitter
    "adult-finding-ema-longest-bn-intensity": Recipe([*EMA_BN, "--augment", "shift-intensity"], start="base-longest"),
    # the fifth build's recipe with view and label made independent by sampling: on the 4-epoch base it lifted the
    # ranking within PA films at the same overall AUROC; the PA films of fold 1 are what that recipe misses
    "adult-finding-ema-longest-bn-view": Recipe([*EMA_BN, "--balance-by", "view"], start="base-longest"),
    # the hard-negative head weighing twice as much
    "adult-finding2-ema": Recipe([*ADULT, "--finding-loss-weight", "2", "--ema-decay", "0.98"]),
    # version 2's recipe from the longer-trained base model
    "adult-finding-ema-long": Recipe(EMA, start="base-long"),
    "adult-finding-ema-longer": Recipe(EMA, start="base-longer"),
    # frozen BatchNorm statistics from the base trained 12 epochs, with and without an anchor of 0.3
    "adult-finding-ema-longer-bn": Recipe(EMA_BN, start="base-longer"),
    "adult-finding-ema-longer-bn-sp3": Recipe([*EMA_BN, "--anchor-weight", "0.3"], start="base-longer"),
    # the same from the bases trained 16 (the fifth build's) and 20 epochs
    "adult-finding-ema-longest-bn": Recipe(EMA_BN, start="base-longest"),
    # the 4-epoch base's recipe and the fifth build's, trained in bfloat16 from the bfloat16 chain
    "adult-finding-ema-bf16": Recipe([*EMA, *BF16], start="base-bf16"),
    "adult-finding-ema-longest-bn-bf16": Recipe([*EMA_BN, *BF16], start="base-longest-bf16"),
    # two of the levers never run from a long base, screened in bfloat16 against the line above: the worst
    # of view x label weighing most, and the hard-negative head weighing twice
    "adult-finding-ema-longest-bn-dro-bf16": Recipe([*EMA_BN, "--group-dro", "view", *BF16], start="base-longest-bf16"),
    "adult-finding2-ema-longest-bn-bf16": Recipe([*EMA_BN, "--finding-loss-weight", "2", *BF16],
                                                 start="base-longest-bf16"),
    # mixup (--mixup 0.2): blends of two films and of their labels, a regulariser for a few hundred adults per
    # fold, from the 4-epoch base against adult-finding-ema
    "adult-finding-ema-mixup": Recipe([*EMA, "--mixup", "0.2"]),
    # decoupled weight decay (AdamW, 0.05) instead of Adam's L2 of 1e-4: the other usual regulariser for fine-tuning
    "adult-finding-ema-adamw": Recipe([*EMA, "--optimizer", "adamw", "--weight-decay", "0.05"]),
    # a view adversary (--view-adversary W): features trained to hide AP vs PA within each label, from the 4-epoch
    # base against adult-finding-ema
    "adult-finding-ema-adversary": Recipe([*EMA, "--view-adversary", "1"]),
    # sharpness-aware minimisation (Foret et al. 2021) at the paper's radius, twice the compute per step
    "adult-finding-ema-sam": Recipe([*EMA, "--sam", "0.05"]),
    "adult-finding-ema-sam02": Recipe([*EMA, "--sam", "0.2"]),  # four times the radius
    # three times the fine-tuning: does the network then fit its own adults better than the held-out ones (a gap
    # for a regulariser to close; benchmarks/last_layer.py measures it)?
    "adult-finding-ema-6ep": Recipe(EMA, epochs=6),
    # the same with mixup: a regulariser where the longer fine-tuning leaves a gap between training and held-out adults
    "adult-finding-ema-6ep-mixup": Recipe([*EMA, "--mixup", "0.2"], epochs=6),
    # pneumonia ranked only against the negatives of its own source and view (a pairwise loss beside the BCE),
    # where the view cannot help: from the 4-epoch base against adult-finding-ema
    "adult-finding-ema-rank": Recipe([*EMA, "--rank-weight", "1"]),
    "adult-finding-ema-rank3": Recipe([*EMA, "--rank-weight", "3"]),  # three times the weight
    # and with the three-times-longer fine-tuning, which ranks better within each view without it
    "adult-finding-ema-6ep-rank": Recipe([*EMA, "--rank-weight", "1"], epochs=6),
    "adult-finding-ema-4ep-rank": Recipe([*EMA, "--rank-weight", "1"], epochs=4),  # and with 4 epochs
    # its pairs against "Not Normal" films (the hard negatives the shipped rule calls most often) weighing 3 times
    "adult-finding-ema-6ep-rank-hard3": Recipe([*EMA, "--rank-weight", "1", "--rank-hard-weight", "3"], epochs=6),
    # the fifth build's fine-tuning (BatchNorm statistics kept) with the ranking, from the 4-epoch base
    "adult-finding-ema-bn-6ep-rank": Recipe([*EMA_BN, "--rank-weight", "1"], epochs=6),
    # the ranking from the 16-epoch base, statistics kept (as in the fifth build; shipped 2026-12-07/08) or free
    "adult-finding-ema-longest-bn-6ep-rank": Recipe([*EMA_BN, "--rank-weight", "1"], epochs=6, start="base-longest"),
    "adult-finding-ema-longest-6ep-rank": Recipe([*EMA, "--rank-weight", "1"], epochs=6, start="base-longest"),
    # and its other seeds, so that the rule compares the tied recipes over the same three seeds
    **{f"adult-finding-ema-longest-6ep-rank-seed{n}": Recipe([*EMA, "--rank-weight", "1", "--seed", str(n)],
                                                             epochs=6, start="base-longest") for n in (1, 2)},
    # the statistics-kept one with its pairs against "Not Normal" films weighing 3 times (the 4-epoch base's screen
    # above); shipped since 2026-12-08, chosen over the two above by the means over seeds 0-2
    "adult-finding-ema-longest-bn-6ep-rank-hard3": Recipe([*EMA_BN, "--rank-weight", "1", "--rank-hard-weight", "3"],
                                                          epochs=6, start="base-longest"),
    # and its other seeds: is its lead in PA sensitivity over the shipped recipe (one seed each) more than chance?
    **{f"adult-finding-ema-longest-bn-6ep-rank-hard3-seed{n}": Recipe(
        [*EMA_BN, "--rank-weight", "1", "--rank-hard-weight", "3", "--seed", str(n)], epochs=6, start="base-longest")
       for n in (1, 2)},
    # the sixth build's recipe with other seeds: how far its mean, and its PA sensitivity per fold, move by chance alone
    **{f"adult-finding-ema-longest-bn-6ep-rank-seed{n}": Recipe([*EMA_BN, "--rank-weight", "1", "--seed", str(n)],
                                                                epochs=6, start="base-longest") for n in (1, 2)},
    "adult-finding-ema-20ep-bn": Recipe(EMA_BN, start="base-20ep"),
    "adult-finding-ema-kermany-base-bn": Recipe(EMA_BN, start="kermany-base"),
    # the fifth build's recipe with other seeds (data order, augmentation, the hard-negative head's start): how far
    # a recipe's mean moves by chance alone, against the 0.005 the bundled model's rule counts as a tie
    "adult-finding-ema-longest-bn-seed1": Recipe([*EMA_BN, "--seed", "1"], start="base-longest"),
    "adult-finding-ema-longest-bn-seed2": Recipe([*EMA_BN, "--seed", "2"], start="base-longest"),
    # the fifth build's recipe one epoch longer, and at twice and half the learning rate (pneumocam train keeps the last
    # --lr given)
    "adult-finding-ema-longest-bn-3ep": Recipe(EMA_BN, epochs=3, start="base-longest"),
    "adult-finding-ema-longest-bn-lr2": Recipe([*EMA_BN, "--lr", "1e-3"], start="base-longest"),
    "adult-finding-ema-longest-bn-lrhalf": Recipe([*EMA_BN, "--lr", "2.5e-4"], start="base-longest"),
    # the source balance of the fifth build's recipe: three times as many children in each fold folder
    "adult-finding-ema-longest-bn-children": Recipe(EMA_BN, start="base-longest",
                                                    shares={CHILDREN: 1500, EXTRA_ADULTS: 500}),
    # box guidance 4 times as strong, and none (the last --box-loss-weight given counts)
    "adult-finding-ema-longest-bn-box2": Recipe([*EMA_BN, "--box-loss-weight", "2"], start="base-longest"),
    "adult-finding-ema-longest-bn-box0": Recipe([*EMA_BN, "--box-loss-weight", "0"], start="base-longest"),
    # rsna_covidx256's negatives are all "Normal": in the fine-tuning they make an abnormal-looking adult film more
    # likely pneumonia than RSNA's real mix does. Without that source, and with its pneumonias (and boxes) only
    "adult-finding-ema-longest-bn-nocovidx": Recipe(EMA_BN, start="base-longest", shares={CHILDREN: 500}),
    "adult-finding-ema-longest-bn-covidxpos": Recipe(EMA_BN, start="base-longest", positives_only=(EXTRA_ADULTS,)),
    # and three times as many of its images (1,500, nearly all of its training split)
    "adult-finding-ema-longest-bn-covidx3": Recipe(EMA_BN, start="base-longest",
                                                   shares={CHILDREN: 500, EXTRA_ADULTS: 1500}),
    # the stem and the first 2 (or 1, or 3) residual stages of the start model fixed: its low-level features, learnt
    # on 6,382 images, kept for the children while the later stages adapt to the adults
    **{f"adult-finding-ema-longest-bn-fs{n}": Recipe([*EMA_BN, "--freeze-stages", str(n)], start="base-longest")
       for n in (1, 2, 3)},
    # three stages fixed leave only layer4 and the head to learn: twice the learning rate, or one epoch more, for
    # them to learn more of the adults; and two more seeds, to read its mean against the fifth build's three
    "adult-finding-ema-longest-bn-fs3-lr2": Recipe([*EMA_BN, "--freeze-stages", "3", "--lr", "1e-3"],
                                                   start="base-longest"),
    "adult-finding-ema-longest-bn-fs3-3ep": Recipe([*EMA_BN, "--freeze-stages", "3"], epochs=3, start="base-longest"),
    **{f"adult-finding-ema-longest-bn-fs3-seed{n}": Recipe([*EMA_BN, "--freeze-stages", "3", "--seed", str(n)],
                                                           start="base-longest") for n in (1, 2)},
    # the same at 320 px: finer input (and a 10x10 CAM) for the fine-tuning and the scoring; and without frozen
    # BatchNorm statistics, which were gathered at 224 px
    "adult-finding-ema-longest-bn-320": Recipe(EMA_BN, start="base-longest", image_size=320),
    "adult-finding-ema-longest-320": Recipe(EMA, start="base-longest", image_size=320),
    # to forget less of base-long (the children): its BatchNorm statistics kept, the weights learn
    "adult-finding-ema-long-bn": Recipe(EMA_BN, start="base-long"),
    # the same aim by L2-SP: the weights pulled toward base-long's (the paper's weight, 0.1)
    "adult-finding-ema-long-sp": Recipe([*EMA, "--anchor-weight", "0.1"], start="base-long"),
    # both: the statistics kept for the adults' ranking, the anchor for the children
    "adult-finding-ema-long-bn-sp": Recipe([*EMA_BN, "--anchor-weight", "0.1"], start="base-long"),
    # the anchor 3 and 10 times as strong: how much of the children it keeps, and what the adults give for it
    "adult-finding-ema-long-bn-sp3": Recipe([*EMA_BN, "--anchor-weight", "0.3"], start="base-long"),
    "adult-finding-ema-long-bn-sp10": Recipe([*EMA_BN, "--anchor-weight", "1"], start="base-long"),
}


def model_path(work: Path, name: str) -> Path:
    """The last checkpoint of a model in TRAINED_ONCE."""
    return work / "runs" / name / "checkpoints" / "last.ckpt"


def once_arguments(work: Path, name: str) -> list[str]:
    """What a model of TRAINED_ONCE adds to COMMON: the model it starts from and its own arguments."""
    once = TRAINED_ONCE[name]
    return ["--pretrained", str(model_path(work, once.start)) if once.start else "none", *once.arguments]


def train_once_command(work: Path, name: str) -> list[str]:
    """The `pneumocam train` command line of a model in TRAINED_ONCE."""
    return ["pneumocam", "train", str(work / TRAINED_ONCE[name].data), str(work / "runs" / name), *COMMON,
            *once_arguments(work, name)]


def lineage(name: str) -> list[str]:
    """The models of TRAINED_ONCE a model starts from, the first trained from scratch, ending with `name`."""
    start = TRAINED_ONCE[name].start if name in TRAINED_ONCE else RECIPES[name].start
    return [*lineage(start), name] if start else [name]


def trained_once(work: Path, shared: Path, name: str) -> Path:
    """A model of TRAINED_ONCE, and the one it starts from, trained (or resumed) where missing."""
    once = TRAINED_ONCE[name]
    if once.start:
        trained_once(work, shared, once.start)
    prepared(work, shared, once.data, list(once.sources))
    return trained(work / once.data, work / "runs" / name, once_arguments(work, name))


def teacher_csv(work: Path, teacher: str) -> Path:
    return work / "teachers" / f"{teacher}-children.csv"


def write_teacher_labels(work: Path, pool: Path, teacher: str) -> None:
    """The teacher's probabilities on every training child of the pool, as --soft-labels reads them."""
    out = teacher_csv(work, teacher)
    if not out.exists():
        rows = [r for r in manifest_rows(pool).values() if source_of(r) == CHILDREN and r["split"] == "train"]
        probabilities = predictions(model_path(work, teacher), pool, rows)
        write_csv(out, ["file", "probability"], [{"file": f, "probability": p} for f, p in probabilities.items()])


def prepared(work: Path, shared: Path, name: str, sources: list[str], image_size: int = IMAGE_SIZE) -> Path:
    out = work / name
    if not (out / "stats.json").exists():
        run(["pneumocam", "prepare", *(str(shared / s) for s in sources), str(out), "--val-fraction", "0.1",
             "--seed", "0", *(["--image-size", str(image_size)] if image_size != IMAGE_SIZE else [])])
    return out


def pool_of(work: Path, shared: Path, recipe: str) -> Path:
    """The prepared pool a recipe's folds are written from and scored on: WORK/pool, or WORK/pool<size>."""
    size = RECIPES[recipe].image_size
    return prepared(work, shared, "pool" if size == IMAGE_SIZE else f"pool{size}", POOL_SOURCES, size)


def epochs_of(arguments: list[str]) -> int:
    return int(arguments[arguments.index("--epochs") + 1])


def fold_network(work: Path, recipe: str, fold: int) -> Path:
    """The network `recipe` trained on fold `fold`'s folder (by this script's --recipes)."""
    network = work / "runs" / recipe / f"fold{fold}" / "checkpoints" / "last.ckpt"
    if not network.exists():
        raise SystemExit(f"{network}: not found (run benchmarks/crossval.py --recipes {recipe} first)")
    return network


def trained(data: Path, run_dir: Path, arguments: list[str]) -> Path:
    """`pneumocam train` with `arguments` (which name --epochs N), resumed where a run stopped."""
    done, epochs = finished_epochs(run_dir), epochs_of(arguments)
    if done < epochs:
        run(["pneumocam", "train", str(data), str(run_dir), *COMMON, *arguments] + (["--resume"] if done else []))
    return run_dir / "checkpoints" / "last.ckpt"


def source_of(row: dict) -> str:
    return row["patient"].partition(":")[0]


def share_filter(rows: list[dict], seed: int, shares: dict[str, int] = SHARES, positives_only: tuple[str, ...] = ()):
    """train_also for write_fold: a seeded sample of shares[source] training images of each training-only source
    (of its pneumonia images only for a source in `positives_only`)."""
    rng = np.random.default_rng(seed)
    chosen = set()
    for source, n in shares.items():
        files = sorted(r["file"] for r in rows if source_of(r) == source and r["split"] == "train"
                       and (source not in positives_only or int(r["label"]) == 1))
        chosen |= set(rng.choice(files, min(n, len(files)), replace=False).tolist())
    return lambda row: row["file"] in chosen


def predictions(checkpoint: Path, data: Path, rows: list[dict]) -> dict[str, float]:
    from pneumocam.deploy import Predictor

    predictor = Predictor.from_checkpoint(checkpoint)
    found, failures = predictor.predict_files([data / r["file"] for r in rows], cam=False, batch_size=64)
    if failures:
        raise SystemExit(f"unreadable prepared files: {failures[:3]}")
    return {str(Path(p.source).relative_to(data)): p.probability for p in found}


def fold_result(work: Path, pool: Path, recipe: str, fold: int, folds: dict[str, int], fraction: float = 1.0) -> dict:
    """One recipe on one fold (the models of TRAINED_ONCE it needs already there)."""
    tag = recipe if fraction == 1.0 else f"{recipe}@{fraction:g}"
    out = work / "cv" / tag / f"fold{fold}.json"
    if out.exists():
        return json.loads(out.read_text())
    rows = list(manifest_rows(pool).values())
    spec = RECIPES[recipe]
    start = time.perf_counter()
    kept = folds
    if fraction < 1.0:  # the learning curve: a seeded share of the training folds' patients, the scored fold whole
        rng = np.random.default_rng(fold)
        train_patients = sorted({r["patient"] for r in rows if folds.get(r["file"], fold) != fold})
        keep = set(rng.choice(train_patients, int(round(fraction * len(train_patients))), replace=False))
        patient_of = {r["file"]: r["patient"] for r in rows}
        kept = {f: k for f, k in folds.items() if k == fold or patient_of[f] in keep}
    train_also = share_filter(rows, fold, spec.shares, spec.positives_only)
    data = write_fold(pool, work / "folds" / tag / f"fold{fold}", kept, fold, train_also)
    if spec.arguments is None:
        checkpoint = model_path(work, recipe)
    else:
        checkpoint = trained(data, work / "runs" / tag / f"fold{fold}", spec.train_arguments(work))
    result = scored_fold(checkpoint, pool, rows, fold, folds, data, work / "localize" / tag / f"fold{fold}")
    result = {"recipe": tag, "fold": fold, "wall_s": round(time.perf_counter() - start), **result}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))
    return result


def scored_fold(checkpoint: Path, pool: Path, rows: list[dict], fold: int, folds: dict[str, int], data: Path,
                localize_dir: Path) -> dict:
    """A network scored on one fold: its probability for each of the fold's adults, its AUROC on the children's
    validation split, and its CAM's pointing game on the fold folder `data` (written under `localize_dir`)."""
    scored = [r for r in rows if folds.get(r["file"]) == fold]
    children = [r for r in rows if source_of(r) == CHILDREN and r["split"] == "val"]
    probs = predictions(checkpoint, pool, scored + children)
    return {"adults": [{"file": r["file"], "label": int(r["label"]), "view": r["view"], "finding": r["finding"],
                        "probability": probs[r["file"]]} for r in scored],
            "children_auroc": fast_auroc(np.array([probs[r["file"]] for r in children]),
                                         np.array([int(r["label"]) for r in children])),
            "localization": localized(checkpoint, data, localize_dir)}


def localized(checkpoint: Path, data: Path, out: Path) -> dict:
    """The CAM's pointing game on the fold's boxed positives, the box prior's, and the paired margin with its CI."""
    if not (out / "localization.json").exists():
        run(["pneumocam", "localize", str(checkpoint), str(data), str(out), "--split", "val", "--methods", "cam"])
    result = json.loads((out / "localization.json").read_text())
    margin = result["methods"]["cam"]["margin_over_box_prior"]["pointing_game"]
    return {"n_images": result["n_images"], "pointing_game": result["pointing_game"],
            "box_prior": result["baseline_box_prior"]["pointing_game"], "margin": margin["mean"],
            "margin_ci95": margin["ci95"]}


def pooled_margin(work: Path, tag: str, k: int) -> dict:
    """The pointing game's margin over the box prior on every fold's boxed positives at once, each image scored by
    the fold network that never saw it and against its own fold's prior (as `localize` scores one fold), with a
    patient-level bootstrap CI: one fold's 83 images leave a CI about +-0.12 wide."""
    from pneumocam.data import box_mask, load_boxes, manifest_patients
    from pneumocam.evaluation import Bootstrap, bootstrap_mean_ci, box_prior
    from pneumocam.explain import pointing_hit

    margins, patients, per_fold = [], [], []
    for fold in range(k):
        data, scored = work / "folds" / tag / f"fold{fold}", work / "localize" / tag / f"fold{fold}"
        rows = [r for r in read_csv(scored / "localization.csv") if r["method"] == "cam"]
        boxes = load_boxes(data)
        size = data_contract(data).image_size
        prior = box_prior(boxes, size)
        prior_hits = [pointing_hit(prior, box_mask(boxes[r["file"]], (size, size))) for r in rows]
        per_fold.append(float(np.mean(prior_hits)))
        margins += [int(r["pointing_hit"]) - int(hit) for r, hit in zip(rows, prior_hits, strict=True)]
        patients += [f"{fold}:{p}" for p in manifest_patients(data, [r["file"] for r in rows])]
    ci = bootstrap_mean_ci(np.array(margins, dtype=float), np.array(patients), Bootstrap(1000, 0))["ci95"]
    return {"n_images": len(margins), "margin": float(np.mean(margins)), "margin_ci95": ci,
            "box_prior_by_fold": per_fold}


def _auroc(items: list[dict], view: str | None = None) -> float | None:
    chosen = [x for x in items if view is None or x["view"] == view]
    return fast_auroc(np.array([x["probability"] for x in chosen]), np.array([x["label"] for x in chosen]))


def _auroc_not_normal(items: list[dict]) -> float | None:
    """Pneumonia against RSNA's "No Lung Opacity / Not Normal" films alone: the ranking that decides how many of
    them an operating point calls, since the "Normal" films are easy."""
    return _auroc([x for x in items if x["label"] == 1 or x["finding"] == "not-normal"])


def _view_leak(items: list[dict]) -> float | None:
    """How well the probability tells AP from PA films of the same label (the AUROC for AP, averaged over the two
    labels): 0.5 when the output says nothing of the view beyond what the label does."""
    scores = []
    for label in (0, 1):
        chosen = [x for x in items if x["label"] == label and x["view"] in ("AP", "PA")]
        score = fast_auroc(np.array([x["probability"] for x in chosen]),
                           np.array([int(x["view"] == "AP") for x in chosen]))
        scores += [] if score is None else [score]
    return float(np.mean(scores)) if scores else None


def _calibrated_ece(items: list[dict], per_view: bool, seeds: int = 5) -> float:
    """The ECE once calibrated as `pneumocam calibrate` would on this fold's adults (one temperature and intercept,
    or one per view as with --per-view), cross-fitted over 5 patient folds; the mean over `seeds` splits, since on
    333 films one split moves it by about 0.01."""
    probs = np.clip([x["probability"] for x in items], 1e-7, 1 - 1e-7)
    logits, labels = np.log(probs / (1 - probs)), np.array([x["label"] for x in items])
    patients = np.array([Path(x["file"]).stem.split("__", 1)[-1] for x in items])
    views = np.array([x["view"] for x in items]) if per_view else None
    return float(np.mean([expected_calibration_error(
        cross_fitted_probabilities(logits, labels, patients, folds=5, seed=seed, views=views), labels)
        for seed in range(seeds)]))


RULES = {  # operating-point rules scored by cross-validation: (per view?, calibrate's --rule, its target)
    "overall_youden": (False, "youden", None),
    "per_view_youden": (True, "youden", None),
    "per_view_sensitivity_0.8": (True, "sensitivity", 0.8),
    "overall_specificity_0.85": (False, "specificity", 0.85),
    "per_view_specificity_0.85": (True, "specificity", 0.85),
}


def operating_point_scores(train: list[dict], test: list[dict], per_view: bool, rule: str,
                           target: float | None) -> dict:
    """Thresholds chosen on `train` (other folds' out-of-fold predictions) by `pneumocam calibrate`'s rule,
    overall or per view (AP, PA; the overall one for other views), applied to `test`."""
    def choose(items):
        probs, labels = np.array([x["probability"] for x in items]), np.array([x["label"] for x in items])
        return choose_threshold(probs, labels, rule, target_sensitivity=target or 0.9,
                                target_specificity=target or 0.85)[0]

    overall = choose(train)
    by_view = {v: choose([x for x in train if x["view"] == v]) for v in ("AP", "PA")} if per_view else {}
    thresholds = np.array([by_view.get(x["view"], overall) for x in test])
    calls = calls_by_view(np.array([x["probability"] for x in test]), np.array([x["label"] for x in test]),
                          thresholds, [x["view"] for x in test], [x["finding"] for x in test])
    return {"sensitivity_pa": calls["by_view"]["PA"]["sensitivity"], "sensitivity": calls["all"]["sensitivity"],
            "specificity": calls["all"]["specificity"], "not_normal_called": calls["not_normal_called"],
            "thresholds": {"overall": overall, **by_view}}


def summarize(results: list[dict]) -> dict:
    per_fold = []
    for r in results:
        others = [x for o in results if o["fold"] != r["fold"] for x in o["adults"]]
        items = r["adults"]
        probs, labels = np.array([x["probability"] for x in items]), np.array([x["label"] for x in items])
        per_fold.append({"auroc": _auroc(items), "auroc_ap": _auroc(items, "AP"), "auroc_pa": _auroc(items, "PA"),
                         "auroc_not_normal": _auroc_not_normal(items), "view_leak": _view_leak(items),
                         "ece": expected_calibration_error(probs, labels), "children_auroc": r["children_auroc"],
                         "ece_calibrated": _calibrated_ece(items, False),
                         "ece_calibrated_by_view": _calibrated_ece(items, True),
                         **{rule: operating_point_scores(others, items, *how) for rule, how in RULES.items()},
                         "pointing_game": r["localization"]["pointing_game"],
                         "box_prior": r["localization"]["box_prior"], "margin": r["localization"]["margin"],
                         "margin_ci95": r["localization"]["margin_ci95"], "wall_s": r["wall_s"]})
    keys = ("auroc", "auroc_ap", "auroc_pa", "auroc_not_normal", "view_leak", "ece", "ece_calibrated",
            "ece_calibrated_by_view", "children_auroc",
            "pointing_game", "box_prior", "margin", "wall_s")
    summary = {k: summarize_folds([f[k] for f in per_fold]) for k in keys}
    for rule in RULES:
        summary[rule] = {k: summarize_folds([f[rule][k] for f in per_fold])
                         for k in ("sensitivity_pa", "sensitivity", "specificity", "not_normal_called")}
    pooled = [x for r in results for x in r["adults"]]
    summary["pooled_auroc"] = _auroc(pooled)
    return {"folds": per_fold, "summary": summary}


def _cell(stats: dict) -> str:
    return "-" if stats["mean"] is None else f"{stats['mean']:.3f} ± {stats['sd']:.3f}"


def print_table(table: dict) -> None:
    width = max(len("recipe"), *map(len, table["recipes"])) + 2
    print(f"\n{'recipe':<{width}}{'AUROC':>16}{'AUROC AP':>16}{'AUROC PA':>16}{'vs Not Normal':>16}{'view leak':>16}"
          f"{'ECE':>16}{'children AUROC':>16}{'pointing - prior':>18}{'pooled [CI]':>22}{'min/fold':>10}")
    for name, entry in table["recipes"].items():
        s = entry["summary"]
        wall = s["wall_s"]["mean"] / 60 if s["wall_s"]["mean"] is not None else 0
        pooled = s.get("pooled_margin")
        pooled_cell = "-" if pooled is None else "{:+.2f} [{:+.2f}, {:+.2f}]".format(pooled["margin"],
                                                                                  *pooled["margin_ci95"])
        print(f"{name:<{width}}{_cell(s['auroc']):>16}{_cell(s['auroc_ap']):>16}{_cell(s['auroc_pa']):>16}"
              f"{_cell(s['auroc_not_normal']):>16}{_cell(s['view_leak']):>16}{_cell(s['ece']):>16}"
              f"{_cell(s['children_auroc']):>16}{_cell(s['margin']):>18}{pooled_cell:>22}{wall:>10.1f}")
    print(f"\n{'recipe':<{width}}{'operating rule':<28}{'PA sensitivity':>16}{'sensitivity':>16}{'specificity':>16}"
          f"{'Not Normal called':>20}")
    for name, entry in table["recipes"].items():
        for rule in RULES:
            r = entry["summary"][rule]
            print(f"{name:<{width}}{rule:<28}{_cell(r['sensitivity_pa']):>16}{_cell(r['sensitivity']):>16}"
                  f"{_cell(r['specificity']):>16}{_cell(r['not_normal_called']):>20}")
    print(f"\n{'recipe':<{width}}{'ECE raw':>16}{'ECE calibrated':>16}{'ECE per view':>16}"
          "   (calibrated: cross-fitted within the fold)")
    for name, entry in table["recipes"].items():
        s = entry["summary"]
        print(f"{name:<{width}}{_cell(s['ece']):>16}{_cell(s['ece_calibrated']):>16}"
              f"{_cell(s['ece_calibrated_by_view']):>16}")
    print(f"\nmean ± sd over {table['k']} folds; thresholds chosen on the other folds' out-of-fold predictions; "
          f"machine: {table['machine']}")


def machine() -> str:
    return (f"{platform.node()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("cv-bench"))
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", nargs="+", choices=RECIPES, default=list(RECIPES))
    parser.add_argument("--learning-curve", choices=[name for name, r in RECIPES.items() if r.arguments is not None],
                        help="also train this recipe on 25%% and 50%% of each fold's adult training patients")
    args = parser.parse_args()
    for source in (ADULTS, EXTRA_ADULTS, CHILDREN):
        if not (args.shared / source).is_dir():
            raise SystemExit(f"{args.shared / source}: not found (pass --shared)")
    work = args.work
    pool = prepared(work, args.shared, "pool", POOL_SOURCES)
    trained_once(work, args.shared, "base")
    chosen = [RECIPES[r] for r in args.recipes]
    for name in {*args.recipes, *(r.start for r in chosen), *(r.teacher for r in chosen)} & set(TRAINED_ONCE):
        trained_once(work, args.shared, name)
    for teacher in {r.teacher for r in chosen} - {None}:
        write_teacher_labels(work, pool, teacher)
    rows = list(manifest_rows(pool).values())
    folds = assign_folds(rows, args.k, args.seed, eligible=lambda r: source_of(r) == ADULTS)
    (work / "folds.json").write_text(json.dumps(folds))
    table = {"k": args.k, "seed": args.seed, "recipes": {},
             "machine": machine(),
             "trained_once_commands": {name: shlex.join(train_once_command(work, name)) for name in TRAINED_ONCE},
             "recipes_defined": {name: asdict(r) for name, r in RECIPES.items()}}
    jobs = [(recipe, 1.0) for recipe in args.recipes]
    if args.learning_curve:
        jobs += [(args.learning_curve, fraction) for fraction in (0.25, 0.5)]
    for recipe, fraction in jobs:
        recipe_pool = pool_of(work, args.shared, recipe)
        results = [fold_result(work, recipe_pool, recipe, fold, folds, fraction) for fold in range(args.k)]
        name = recipe if fraction == 1.0 else f"{recipe}@{fraction:g}"
        table["recipes"][name] = summarize(results)
        table["recipes"][name]["summary"]["pooled_margin"] = pooled_margin(work, name, args.k)
        (work / "crossval.json").write_text(json.dumps(table, indent=2))
    print_table(table)
    print(f"wrote {work / 'crossval.json'}")


if __name__ == "__main__":
    main()
