"""Every setting of every step, with its default and its help, written once.

The CLI is built from these dataclasses (`pneumocam.cli.arguments`): a field is a `--kebab-case` flag whose
help text and default come from here, and a run's resolved settings are written as YAML that
`--config` reads back. Nothing here imports torch, so `pneumocam --help` stays fast.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IMAGE_SIZE, CAM_STRIDE = 224, 32  # CAM_STRIDE: input pixels per CAM cell (the ResNet18 trunk halves five times)
RESIZE_MODES, CAM_SCALES = ("pad", "stretch"), ("absolute", "relative")
SOURCE_FORMATS, ALIGNMENTS = ("auto", "rsna", "folders", "medmnist"), ("receptive-field", "block-centre")
AUGMENTATIONS = ("original", "shift", "shift-intensity", "none")
OPTIMIZERS, SCHEDULES = ("adam", "adamw"), ("cosine", "onecycle", "plateau", "none")
MONITORS, AUTO_ON_OFF = ("val_loss", "val_auroc", "val_acc"), ("auto", "on", "off")
EVALUATION_SPLITS, SUBGROUP_ATTRIBUTES = ("auto", "test", "val", "train", "all"), ("sex", "age_band", "view", "finding")
# what --balance-by may balance the label against (not the finding: the label's detail); --rank-weight's pairs
BALANCE_ATTRIBUTES, RANK_STRATA = ("view", "sex", "age_band", "source"), ("source", "view")
THRESHOLD_RULES = ("sensitivity", "specificity", "youden")
CAM_METHODS = ("cam", "gradcam", "gradcam++", "scorecam", "eigencam", "layercam")
BACKENDS = ("torch", "onnxruntime", "openvino", "onnxruntime-int8", "openvino-int8")
BACKEND_CHOICES = ("auto", *BACKENDS)  # auto: onnxruntime on the CPU where it is installed, else torch
REPLACEMENTS, EXPORT_FORMATS = ("blur", "mean"), ("onnx", "torchscript")
RSNA_MEAN, RSNA_STD = 0.49, 0.248  # the RSNA training set's pixel mean and std in [0, 1] (the course's)
OOD_QUANTILE, MIN_SUBGROUP_SIZE = 0.99, 20


def option(default: Any, help: str, *, choices: tuple | None = None, flag: str | None = None,
           shown: str | None = None, parse: str | None = None, metavar: str | None = None) -> Any:
    """A config field that is also a CLI flag: `help` becomes its --help text, `shown` how a None default reads,
    `parse` the name of a converter in cli.arguments for values that are not plain int/float/str/bool."""
    meta = {"help": help, "choices": choices, "flag": flag, "shown": shown, "parse": parse, "metavar": metavar}
    return field(default=default, metadata=meta)


def workers_or_cores(workers: int | None) -> int:
    """None (the default of every `workers` setting): all cores."""
    return workers if workers else os.cpu_count() or 1


def _alignment() -> Any:
    return option(None, "where each CAM cell (7x7 at 224 px) sits in the image: receptive-field (cell p at "
                        "pixel 32p, the centre of what it sees) or block-centre ((p + 0.5) * 32, as cv2.resize "
                        "places it)", choices=ALIGNMENTS, shown="the checkpoint's")


def _backend() -> Any:
    return option("auto", "who runs the network: torch; onnxruntime / openvino on the model's ONNX export, made on "
                          "first use and cached (same logit and CAM within 1e-4; they start without importing torch); "
                          "onnxruntime-int8 / openvino-int8 on the model's INT8 copy that `pneumocam quantize` made "
                          "(pneumocam[fast]); auto: onnxruntime on the CPU where it is installed, else torch",
                  choices=BACKEND_CHOICES)


def _cam_scale() -> Any:
    return option("absolute", "overlay scale: absolute (the model's evidence, white at the threshold, warm above it, "
                              "cool below, a colour bar in probabilities) or relative (min-max per image in jet: "
                              "where the model looked most, not evidence)", choices=CAM_SCALES)


_SEED = "random seed; the same seed repeats a run exactly on the same kind of CPU"
_DEVICE, _BATCH = "cpu, cuda or auto", "images per forward pass"
_TOKEN_ENV = "name of an environment variable holding a bearer token"
_VIEWS = ("a CSV of view positions, e.g. rsna_1000's metadata.csv (patientId: a file's name without extension; "
          "ViewPosition or view): a file whose DICOM header states no view gets that view's threshold")


@dataclass(frozen=True)
class SynthConfig:
    """The phantom data set of `pneumocam synth`."""

    n_images: int = option(800, "number of phantom images")
    positive_fraction: float = option(0.35, "share of pneumonia images")
    size: int = option(1024, "image side in pixels (RSNA's is 1024)")
    seed: int = option(0, "random seed; the same seed gives the same files")
    workers: int | None = option(None, "processes", shown="all cores")


@dataclass(frozen=True)
class PrepareConfig:
    """How `pneumocam prepare` splits and resizes a data set."""

    val_fraction: float = option(0.2, "share of patients in validation")
    test_fraction: float = option(0.0, "share of patients in a test split carved like validation (a source's own "
                                       "test split is kept instead)")
    seed: int = option(0, "seed of the stratified patient split")
    workers: int | None = option(None, "processes", shown="all cores")
    resize_mode: str = option("pad", "non-square images: pad to a square with black, then resize; or stretch",
                              choices=RESIZE_MODES)
    image_size: int = option(IMAGE_SIZE, "side of the square model input in pixels, a multiple of 32 (the CAM has "
                                         "one cell per 32 px: 7x7 at 224, 10x10 at 320); compute grows as its square")
    source_format: str = option("auto", "source layout (auto: detected)", choices=SOURCE_FORMATS, flag="--format")
    class_map: str | None = option(None, "class folders: folder name -> label", shown="NORMAL=0,PNEUMONIA=1")
    box_space: float | None = option(None, "RSNA layout: side of the pixel space the labels' boxes are given in; "
                                           "boxes are scaled by each image's size / this", shown="1024")

    def split_settings(self) -> dict:
        """The settings that decide which file goes where; a resume must not change them."""
        return {"val_fraction": self.val_fraction, "seed": self.seed, "resize_mode": self.resize_mode,
                "image_size": self.image_size, "class_map": self.class_map, "box_space": self.box_space,
                "test_fraction": self.test_fraction}


@dataclass(frozen=True)
class TrainConfig:
    """A training run of `pneumocam train` (`commands.train.fit`)."""

    epochs: int = option(10, "training epochs")
    batch_size: int = option(32, "images per training step")
    lr: float = option(1e-3, "peak learning rate")
    weight_decay: float = option(1e-4, "weight decay")
    optimizer: str = option("adam", "optimiser", choices=OPTIMIZERS)
    schedule: str = option("cosine", "learning-rate schedule: cosine after a linear warm-up, onecycle, plateau "
                                     "(halve on a stalled --monitor) or none", choices=SCHEDULES)
    warmup_fraction: float = option(0.05, "share of the steps in the linear warm-up of --schedule cosine")
    grad_clip: float = option(0.0, "clip the gradient norm to this value (0: off)")
    early_stop_patience: int = option(0, "stop after N epochs without improvement of --monitor (0: off)")
    pos_weight: str = option("auto", "BCE positive-class weight: auto (n_negative / n_positive) or a number")
    balanced_sampling: bool = option(False, "draw both classes equally often (with replacement)")
    balance_by: tuple[str, ...] = option((), "draw images so that every group of these manifest attributes (view, "
                                             "sex, age_band, source; comma-separated) has the same pneumonia "
                                             "prevalence, each group keeping its size: the label no longer "
                                             "tells the attribute (an unknown value is a group of its own)",
                                         parse="names", choices=BALANCE_ATTRIBUTES, shown="none")
    source_shares: str | None = option(None, "share of the drawn training images per source folder of a "
                                             "multi-source prepare, e.g. kermany224=0.3,rsna_1000=0.7 (normalised "
                                             "to sum 1; --balance-by and --balanced-sampling then act within each "
                                             "source)", shown="in proportion to their sizes")
    augment: str = option("original", "original: affine ±5°, translate 5%, scale 0.9-1.1 + resized crop 0.35-1; "
                                      "shift: affine ±5°, translate 10%, scale 0.9-1.1, no crop; shift-intensity: "
                                      "shift after a random gamma 0.7-1.4, contrast 0.8-1.2 and brightness ±0.1",
                          choices=AUGMENTATIONS)
    box_loss_weight: float = option(0.0, "weight of a loss that steers the CAM into the boxes of the training images "
                                         "that have them (DATA/boxes.csv); it adds no layer, so the CAM still "
                                         "explains the logit exactly (0: labels only)")
    finding_loss_weight: float = option(0.0, "weight of an auxiliary output beside the pneumonia logit that tells "
                                             "RSNA's \"No Lung Opacity / Not Normal\" films (manifest finding) apart; "
                                             "predictions and CAM stay the pneumonia logit's (0: off)")
    soft_labels: str | None = option(None, "a teacher's CSV (source or file, probability; `pneumocam predict`'s): "
                                           "the training images it names learn (1 - w) x label + w x probability")
    soft_label_weight: float = option(0.5, "w of --soft-labels, in [0, 1]")
    group_dro: tuple[str, ...] = option((), "train for the worst group (group DRO): groups are these attributes' "
                                            "values x the label; the loss weights each group's mean loss, raising "
                                            "the worst served (view, sex, age_band, source)", parse="names",
                                        choices=BALANCE_ATTRIBUTES, shown="none")
    rank_weight: float = option(0.0, "weight of a pairwise loss that ranks each pneumonia film above the negatives of "
                                     "its own source and view only, so the view cannot rank (0: off)", metavar="W")
    rank_hard_weight: float = option(1.0, "what a --rank-weight pair weighs, relative to its stratum's others, when "
                                          "its negative is a \"Not Normal\" film (manifest finding)", metavar="H")
    ema_decay: float = option(0.0, "keep an exponential moving average of the weights, updated every step with this "
                                   "decay (e.g. 0.98: about the last 50 steps), and validate, save and predict "
                                   "with it instead of the last step's weights (0: off)")
    mixup: float = option(0.0, "train on blends of two films and of their labels (mixup), the share drawn from "
                               "Beta(A, A), e.g. A = 0.2; a blend's boxes are both films' (0: off)", metavar="A")
    view_adversary: float = option(0.0, "weight of a loss training the features to leave a head guessing 50:50 whether "
                                        "a film of known label is AP or PA (training only; 0: off)", metavar="W")
    sam: float = option(0.0, "sharpness-aware minimisation (SAM): each step descends the gradient taken at the "
                             "worst point within RHO of the weights, e.g. 0.05; 2x the compute (0: off)", metavar="RHO")
    anchor_weight: float = option(0.0, "pull the weights toward those of the --pretrained model: adds this x the "
                                       "half sum of their squared distance to the loss (L2-SP), so fine-tuning "
                                       "forgets less of what that model knew (0: off)")
    freeze_batchnorm: bool = option(False, "keep the BatchNorm statistics of the --pretrained model (their scale "
                                           "and shift still learn): fine-tuning on a new population then does not "
                                           "change how the images of the old one are normalised")
    freeze_stages: int = option(0, "keep the stem and the first N of the 4 residual stages of the --pretrained model "
                                   "fixed (weights and BatchNorm statistics), so only the later ones adapt (0: off)")
    pretrained: str = option("imagenet", "imagenet (torchvision download), none (from scratch), a resnet18 state "
                                         "dict, or a checkpoint pneumocam trained")
    data_stats: bool | None = option(None, "normalise with the data's own mean/std from stats.json (--no-data-stats: "
                                           "RSNA's 0.49/0.248)", shown="stats.json when prepare wrote one")
    monitor: str = option("val_loss", "validation metric that picks best.ckpt", choices=MONITORS)
    seed: int = option(0, _SEED)
    num_workers: int = option(0, "DataLoader worker processes")
    accelerator: str = option("auto", "Lightning accelerator: auto, cpu, gpu")
    devices: str = option("auto", "Lightning devices: auto, a count, or a list like 0,1")
    strategy: str = option("auto", "Lightning strategy, e.g. ddp for several GPUs or nodes")
    num_nodes: int = option(1, "machines for DDP")
    precision: str = option("auto", "auto (bf16-mixed or 16-mixed on a GPU, 32-true on CPU) or a Lightning precision")
    channels_last: bool = option(True, "channels-last memory format")
    in_memory: str = option("auto", "hold the data in memory and augment on the device (auto: on a GPU)",
                            choices=AUTO_ON_OFF)
    compile: bool = option(False, "torch.compile the network")
    deterministic: str = option("auto", "deterministic algorithms (auto: on for CPU, so a seed repeats a run on "
                                        "that kind of CPU; off on a GPU, where cuDNN autotuning is faster)",
                                choices=AUTO_ON_OFF)
    resume: bool = option(False, "continue from RUN/checkpoints/last.ckpt (weights, optimiser, schedule, epoch)")
    fast_dev_run: bool = option(False, "one training and one validation batch, to check the set-up")


@dataclass(frozen=True)
class EvalConfig:
    """What `pneumocam evaluate` measures, on which split, at which threshold."""

    split: str = option("auto", "split under DATA/Processed (auto: test when DATA has one, else val, which the "
                                "report then flags as the split that chose the checkpoint)", choices=EVALUATION_SPLITS)
    threshold: float | None = option(None, "decision threshold on the probability",
                                     shown="the checkpoint's: 0.5 unless pneumocam calibrate chose one")
    target_sensitivity: float = option(0.9, "operating point: the highest threshold reaching this sensitivity")
    threshold_from: str | None = option(None, "split on which the Youden and target-sensitivity thresholds are "
                                              "chosen", shown="--split")
    bootstrap: int = option(1000, "bootstrap resamples for 95% CIs (0: none)")
    seed: int = option(0, "bootstrap seed")
    batch_size: int = option(32, _BATCH)
    device: str = option("cpu", _DEVICE)
    gallery_size: int = option(4, "images per row of the report's CAM gallery")
    report: bool = option(True, "write the plots, the CAM gallery and report.html")
    by: tuple[str, ...] | None = option(None, "subgroups: a comma-separated list of sex, age_band, view, finding "
                                              "(each value and each pair of values), or none",
                                        shown="every attribute the manifest knows", parse="attributes",
                                        choices=SUBGROUP_ATTRIBUTES)
    min_subgroup_size: int = option(MIN_SUBGROUP_SIZE, "groups with fewer images are shown but flagged")
    maps: bool = option(True, "where the split has boxes: the 'Can you trust these maps?' section (localisation "
                              "with CIs, deletion/insertion curves, randomisation check, worst misses)")
    maps_images: int = option(100, "boxed images the maps section scores at most, a seeded sample (pneumocam "
                                   "localize scores them all)")
    cam_scale: str = _cam_scale()


@dataclass(frozen=True)
class CalibrateConfig:
    """The calibration, threshold rule and out-of-range detector of `pneumocam calibrate`."""

    split: str = option("val", "calibration split (never test, which must stay unseen)", choices=("val", "train"))
    prevalence: float | None = option(None, "prevalence where the model will be used: shifts the intercept from the "
                                            "calibration split's prevalence to this one", shown="the split's")
    intercept: bool = option(True, "fit an intercept with the temperature (--no-intercept: temperature alone)")
    rule: str = option("sensitivity", "threshold rule: sensitivity (the highest threshold reaching "
                                      "--target-sensitivity), specificity (the lowest reaching --target-specificity: "
                                      "the most sensitive with so few false alarms) or youden", choices=THRESHOLD_RULES)
    target_sensitivity: float = option(0.9, "for --rule sensitivity")
    target_specificity: float = option(0.85, "for --rule specificity")
    per_view: bool = option(False, "also a threshold and a calibration per view (manifest.csv's view: AP, PA...) with "
                                   "--min-view-images of each class, applied by predict, serve and pacs from the DICOM "
                                   "header (predict and cam also from --views); the overall ones for other views")
    per_view_calibration: bool = option(True, "with --per-view: the calibration per view too (AP films carry pneumonia "
                                              "far more often than PA films); not with --prevalence")
    min_view_images: int = option(10, "with --per-view: fewest images of each class a view needs for its own")
    ood_quantile: float = option(OOD_QUANTILE, "out-of-range threshold: this quantile of the calibration distances")
    ood_train_images: int = option(2000, "training images sampled for the out-of-range feature distribution")
    ood_data: str | None = option(None, "prepared data the model was trained on, when it is not DATA: the "
                                        "out-of-range detector is fitted on its train split", shown="DATA")
    folds: int = option(5, "cross-fitting folds of the held-out ECE estimate")
    batch_size: int = option(32, _BATCH)
    device: str = option("cpu", _DEVICE)
    seed: int = option(0, "seed of the sampling and the cross-fitting folds")


@dataclass(frozen=True)
class CamConfig:
    """The maps and overlays of `pneumocam cam`."""

    alpha: float = option(0.5, "heatmap opacity in [0, 1]")
    colormap: str = option("jet", "matplotlib colour map of the relative scale")
    cam_scale: str = _cam_scale()
    batch_size: int = option(32, _BATCH)
    device: str = option("cpu", _DEVICE)
    method: str = option("cam", "cam (from the forward pass), gradcam or gradcam++ (one backward pass); scorecam, "
                                "eigencam, layercam need pneumocam[cam-extra]", choices=CAM_METHODS)
    workers: int | None = option(None, "processes drawing the PNGs", shown="all cores")
    alignment: str | None = _alignment()
    views: str | None = option(None, _VIEWS, metavar="CSV")


@dataclass(frozen=True)
class LocalizeConfig:
    """Which maps `pneumocam localize` scores against which boxes, and how."""

    split: str = option("auto", "which boxed images (auto: test when DATA has one, else val; never the training "
                                "boxes of a box-guided model unless --allow-training-boxes)", choices=EVALUATION_SPLITS)
    allow_training_boxes: bool = option(False, "let --split train/all score a box-guided model on its training boxes")
    methods: tuple[str, ...] = option(("cam", "gradcam", "gradcam++"), "saliency methods to score (scorecam, eigencam "
                                      "and layercam need pneumocam[cam-extra])", choices=CAM_METHODS, parse="list")
    batch_size: int = option(16, _BATCH)
    seed: int = option(0, "seed of the random baseline, the sample and the randomisation")
    randomize_check: bool = option(False, "model-randomisation sanity check: re-initialise layer4+fc, maps must "
                                          "change (exit code 3 if a method fails)")
    grid_images: int = option(16, "images in localization_grid.png")
    cam_scale: str = _cam_scale()
    faithfulness: bool = option(False, "deletion and insertion curves and ROAD (MoRF, LeRF) of the pneumonia logit "
                                       "and probability, for every method and baseline")
    road: bool = option(True, "with --faithfulness, include ROAD (its imputation is the slow part)")
    replacement: str = option("blur", "what deleted pixels become in deletion/insertion", choices=REPLACEMENTS)
    export: str | None = option(None, "also write the maps and boxes in CheXlocalize's input format to "
                                      "OUT/chexlocalize/", choices=("chexlocalize",))
    max_images: int | None = option(None, "score a seeded sample of this many boxed images", shown="all")
    device: str = option("cpu", _DEVICE)
    alignment: str | None = _alignment()


@dataclass(frozen=True)
class PredictConfig:
    """The predictions of `pneumocam predict`."""

    threshold: float | None = option(None, "decision threshold", shown="the checkpoint's")
    batch_size: int = option(32, _BATCH)
    device: str = option("cpu", _DEVICE)
    overlays: bool = option(False, "also write CAM overlay PNGs to OUT/overlays/ (needs --out)")
    cam_scale: str = _cam_scale()
    output_format: str = option("csv", "table format", choices=("csv", "json"), flag="--format")
    backend: str = _backend()
    dicom_out: str | None = option(None, "for DICOM inputs, also write a Secondary Capture (image + CAM overlay) and "
                                         "a structured report per image here, in the source's Study "
                                         "(pneumocam[dicom])", metavar="DIR")
    views: str | None = option(None, _VIEWS, metavar="CSV")


@dataclass(frozen=True)
class ServeConfig:
    """The web service of `pneumocam serve`."""

    host: str = option("127.0.0.1", "address to bind (127.0.0.1: this machine only)")
    port: int = option(8000, "port (1-65535)", parse="port")
    token_env: str | None = option(None, _TOKEN_ENV)
    max_upload_mb: float = option(32.0, "largest accepted upload in MB")
    max_concurrency: int = option(2, "uploads decoded at once")
    max_queue: int = option(32, "requests waiting beyond those; more get 503")
    max_batch: int = option(16, "concurrent requests share one forward pass of up to this many images")
    max_wait_ms: float = option(50.0, "how long a batch may wait for requests still being decoded (a lone request "
                                      "never waits)")
    device: str = option("cpu", _DEVICE)
    backend: str = _backend()
    cam_scale: str = _cam_scale()
    api_docs: bool = option(False, "serve interactive API docs at /docs and /redoc (the browser fetches Swagger UI "
                                   "from the jsDelivr CDN, so they need internet; /openapi.json is always served)")


@dataclass(frozen=True)
class PacsConfig:
    """The DICOMweb loop of `pneumocam pacs`."""

    state: str = option("pneumocam-pacs-state.json", "file recording the images done, so none is processed twice "
                                                      "(readable by its owner only; one process per file)")
    once: bool = option(False, "one pass, then exit (--no-once: watch until interrupted)")
    interval_s: float = option(60.0, "seconds between passes when watching", flag="--interval")
    modalities: tuple[str, ...] = option(("CR", "DX"), "modalities of the series to read, comma-separated",
                                         parse="comma")
    max_attempts: int = option(3, "passes a failing image (or study) is tried before it is left alone")
    token_env: str | None = option(None, _TOKEN_ENV)
    timeout_s: float = option(60.0, "seconds per HTTP request", flag="--timeout")
    insecure: bool = option(False, "allow sending the bearer token over plain http:// to another machine")
    limit: int = option(1000, "studies per query page")
    device: str = option("cpu", _DEVICE)
    backend: str = _backend()
    cam_scale: str = _cam_scale()


@dataclass(frozen=True)
class ExportConfig:
    """The exported file of `pneumocam export`."""

    format: str = option("onnx", "file format", choices=EXPORT_FORMATS)
    tolerance: float = option(1e-4, "largest accepted |difference| from PyTorch")
    seed: int = option(0, "seed of the parity check's random inputs")


@dataclass(frozen=True)
class QuantizeConfig:
    """The INT8 copy that `pneumocam quantize` makes and checks."""

    count: int = option(300, "calibration images, a seeded sample of the inputs")
    check_count: int = option(100, "further images of the inputs on which the INT8 copy is compared with float32")
    seed: int = option(0, "seed of the sample")
    batch_size: int = option(16, "images per calibration batch")
    force: bool = option(False, "make it again even where this model's INT8 copy is cached")


@dataclass(frozen=True)
class DemoConfig:
    """The size, length and seed of `pneumocam demo`."""

    # 400 phantoms and 5 epochs keep the demo under 5 minutes on 2 cores (measured: docs/benchmarks.md);
    # 800 and 8 localise better (pointing game 0.964 against 0.857) in twice the time
    n_images: int = option(400, "phantom images")
    epochs: int = option(5, "training epochs")
    seed: int = option(0, "seed of every stage")
    n_cam_images: int = option(8, "validation images drawn with their CAM")


def config_values(config: Any) -> dict:
    """A config as plain YAML/JSON values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def write_yaml(path: str | Path, config: Any, command: str) -> Path:
    """The resolved settings of a run, in the form `pneumocam COMMAND --config PATH` reads back."""
    import yaml

    from pneumocam.files import atomic_open

    path = Path(path)
    header = f"# pneumocam {command}: the resolved settings of this run; rerun with --config {path.name}\n"
    with atomic_open(path, "w") as f:
        f.write(header + yaml.safe_dump(config_values(config), sort_keys=False))
    return path
