"""The `pneumocam` argument parser: one sub-command per step, its settings from the step's config dataclass."""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Callable
from dataclasses import dataclass, field

from pneumocam import __version__
from pneumocam.cli import handlers
from pneumocam.cli.arguments import add_config_arguments
from pneumocam.config import (
    CalibrateConfig,
    CamConfig,
    DemoConfig,
    EvalConfig,
    ExportConfig,
    LocalizeConfig,
    PacsConfig,
    PredictConfig,
    PrepareConfig,
    QuantizeConfig,
    ServeConfig,
    SynthConfig,
    TrainConfig,
)

# checkpoints.BUNDLED_MODELS, without importing torch (a test keeps them equal)
BUNDLED_NAMES = ("pneumocam-cxr", "pneumocam-cxr@1")
CHECKPOINT = ("checkpoint", {"help": "a .ckpt written by pneumocam train, or a bundled model's name "
                                     "(pneumocam-cxr, or pneumocam-cxr@1 for version 1; see pneumocam models)"})
DATA = ("data", {"help": "prepared data folder (pneumocam prepare's OUT)"})


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    handler: Callable
    examples: tuple[str, ...]
    config: type | None = None
    arguments: tuple[tuple[str, dict], ...] = field(default_factory=tuple)  # (name or flag, add_argument kwargs)


COMMANDS = (
    Command("synth", "Make a phantom chest X-ray set in the RSNA layout (JPEG DICOMs + labels CSV with boxes).",
            handlers.synth, ("pneumocam synth phantoms/", "pneumocam synth phantoms/ --n-images 200 --seed 3"),
            SynthConfig, (("out", {"help": "output folder (stage_2_train_images/, stage_2_train_labels.csv)"}),)),
    Command("prepare", "Turn a data set into square float .npy files (224x224 unless --image-size) under "
                       "OUT/Processed/{train,val,test}/{0,1}/.",
            handlers.prepare,
            ("pneumocam prepare rsna-pneumonia-detection-challenge/ data/",
             "pneumocam prepare chest_xray/ kermany-data/ --class-map NORMAL=0,PNEUMONIA=1",
             "pneumocam prepare rsna-as-png-512/ data/            # boxes follow the image size",
             "pneumocam prepare pneumoniamnist.npz mnist-data/",
             "pneumocam prepare kermany/ rsna/ both-data/        # two sources, one data set",
             "pneumocam prepare phantoms/ data/ --val-fraction 0.2 --seed 1",
             "pneumocam prepare rsna-pneumonia-detection-challenge/ data320/ --image-size 320   # a 10x10 CAM"),
            PrepareConfig,
            (("sources", {"nargs": "+", "metavar": "SOURCE",
                          "help": "RSNA layout (stage_2_train_images/ + stage_2_train_labels.csv), class folders "
                                  "(<root>/[train|val|test/]<CLASS>/*) or a MedMNIST .npz; several go into one data "
                                  "set, each split as if prepared alone"}),
             ("out", {"help": "output folder (Processed/, manifest.csv, boxes.csv, stats.json, rejected.csv)"}))),
    Command("train", "Train PneumoniaNet with PyTorch Lightning; writes RUN/checkpoints/{best,last}.ckpt and "
                     "RUN/config.yaml.", handlers.train,
            ("pneumocam train data/ run/ --pretrained none --epochs 10",
             "pneumocam train data/ run2/ --config run/config.yaml --seed 1   # a run's settings, one changed",
             "pneumocam train data/ run/ --box-loss-weight 1  # RSNA boxes steer the CAM",
             "pneumocam train data/ run/ --pretrained pneumocam-cxr   # continue from the bundled model",
             "pneumocam train rsna-data/ run/ --balance-by view   # the label no longer tells AP from PA films",
             "pneumocam train rsna-data/ run/ --group-dro view    # the worst of view x label weighs most",
             "pneumocam train rsna-data/ run/ --rank-weight 1     # rank pneumonia against its own view's negatives",
             "pneumocam train joint/ run/ --source-shares kermany224=0.3,rsna_1000=0.7   # each source's share",
             "pneumocam train data/ run/ --resume            # after an interruption",
             "pneumocam train data/ run/ --precision bf16-mixed   # a CPU with AVX512-BF16/AMX: 1.8x faster, ranks a "
             "little worse",
             "pneumocam train data/ run/ --devices 4 --strategy ddp   # several GPUs"),
            TrainConfig, (("data", {"help": "prepared data folder (with Processed/train and Processed/val)"}),
                          ("run", {"help": "run folder for checkpoints, config.yaml and logs"}))),
    Command("evaluate", "Evaluate checkpoints on a prepared split: metrics.json, predictions.csv, plots, "
                        "report.html; with several checkpoints, a comparison table.", handlers.evaluate,
            ("pneumocam evaluate run/checkpoints/best.ckpt data/ eval/",
             "pneumocam evaluate run/checkpoints/best.ckpt data/ eval/ --split test --threshold-from val",
             "pneumocam evaluate runA/checkpoints/best.ckpt runB/checkpoints/best.ckpt data/ compare/"),
            EvalConfig, (("checkpoints", {"nargs": "+", "metavar": "CKPT",
                                          "help": "one or more checkpoints: " + CHECKPOINT[1]["help"]}),
                         DATA, ("out", {"help": "output folder"}))),
    Command("calibrate", "Calibrate a checkpoint on a calibration split: temperature (+ intercept), a prevalence "
                         "correction, a threshold by a stated rule and the out-of-range detector, written into a "
                         "copy of the checkpoint.", handlers.calibrate,
            ("pneumocam calibrate run/checkpoints/best.ckpt data/ cal/",
             "pneumocam calibrate pneumocam-cxr rsna-data/ cal/ --rule youden --ood-data both-data/",
             "pneumocam calibrate run/checkpoints/best.ckpt data/ cal/ --prevalence 0.1 --target-sensitivity 0.95",
             "pneumocam calibrate run/checkpoints/best.ckpt rsna-data/ cal/ --rule youden --per-view  # AP and PA",
             "pneumocam calibrate run/checkpoints/best.ckpt rsna-data/ cal/ --rule specificity --per-view",
             "pneumocam evaluate cal/calibrated.ckpt data/ eval/ --split test"),
            CalibrateConfig, (CHECKPOINT, DATA, ("out", {"help": "output folder (calibrated.ckpt, calibration.json, "
                                                                 "reliability.png)"}))),
    Command("cam", "Class Activation Maps: one side-by-side PNG per image plus the raw 7x7 and 224x224 maps.",
            handlers.cam, ("pneumocam cam run/checkpoints/best.ckpt xray.dcm --out cams/",
                           "pneumocam cam run/checkpoints/best.ckpt data/Processed/val/1 --out cams/ --alpha 0.4",
                           "pneumocam cam pneumocam-cxr rsna/stage_2_train_images/ --views rsna/metadata.csv --out c/"),
            CamConfig, (CHECKPOINT, ("images", {"nargs": "+", "metavar": "IMAGE",
                                                "help": "DICOM, PNG, JPEG or .npy files, or folders"}),
                        ("--out", {"required": True, "help": "output folder"}))),
    Command("localize", "Score CAM / Grad-CAM maps against ground-truth boxes (pointing game, IoU, IoBB, pixel "
                        "AUPRC, with CIs and baselines) and, with --faithfulness, whether they drive the logit.",
            handlers.localize,
            ("pneumocam localize run/checkpoints/best.ckpt data/ loc/",
             "pneumocam localize run/checkpoints/best.ckpt data/ loc/ --split val --randomize-check",
             "pneumocam localize pneumocam-cxr rsna-data/ loc/ --faithfulness --export chexlocalize"),
            LocalizeConfig, (CHECKPOINT, ("data", {"help": "prepared data folder with boxes.csv"}),
                             ("out", {"help": "output folder (localization.json, .csv, localization_grid.png)"}))),
    Command("predict", "Pneumonia probabilities for files, folders (recursive) or glob patterns.", handlers.predict,
            ("pneumocam predict run/checkpoints/best.ckpt xray.dcm",
             "pneumocam predict run/checkpoints/best.ckpt 'scans/**/*.dcm' --out preds/ --overlays",
             "pneumocam predict run/checkpoints/best.ckpt folder/ --format json --threshold 0.3",
             "pneumocam predict pneumocam-cxr 'scans/*.dcm' --out preds/ --dicom-out results/",
             "pneumocam predict pneumocam-cxr folder/ --backend onnxruntime --batch-size 16",
             "pneumocam predict pneumocam-cxr rsna/stage_2_train_images/ --views rsna/metadata.csv --out preds/"),
            PredictConfig, (CHECKPOINT, ("inputs", {"nargs": "+", "metavar": "INPUT",
                                                    "help": "DICOM/PNG/JPEG/npy files, folders or quoted globs"}),
                            ("--out", {"default": None, "help": "output folder (default: print the table)"}))),
    Command("serve", "Web service and page: upload an X-ray, see the probability and the CAM.", handlers.serve,
            ("pneumocam serve run/checkpoints/best.ckpt",
             "PNEUMOCAM_TOKEN=secret pneumocam serve run/checkpoints/best.ckpt --port 8080 --token-env PNEUMOCAM_TOKEN",
             "pneumocam serve pneumocam-cxr --backend onnxruntime --max-batch 16 --max-wait-ms 50",
             "curl -F file=@one.dcm 'http://127.0.0.1:8000/v1/predict?pictures=overlay'  # from another shell"),
            ServeConfig, (CHECKPOINT,)),
    Command("pacs", "Watch a PACS over DICOMweb: predict each new CR/DX study and store a Secondary Capture and a "
                    "structured report back into it (needs pneumocam[pacs]).", handlers.pacs,
            ("pneumocam pacs pneumocam-cxr http://localhost:8042/dicom-web --once",
             "pneumocam pacs pneumocam-cxr https://pacs.example.org/dicom-web --state /var/lib/pneumocam/pacs.json "
             "--interval 30 --token-env PACS_TOKEN"),
            PacsConfig, (CHECKPOINT, ("url", {"help": "the DICOMweb base URL (QIDO-RS, WADO-RS, STOW-RS below it)"}))),
    Command("export", "Export a checkpoint to ONNX or TorchScript (outputs logit and feature map), with a parity "
                      "check against PyTorch.", handlers.export,
            ("pneumocam export run/checkpoints/best.ckpt model.onnx",
             "pneumocam export run/checkpoints/best.ckpt model.pt --format torchscript"),
            ExportConfig, (CHECKPOINT, ("out", {"help": "output file (a description OUT.json is written beside it)"}))),
    Command("quantize", "Make a model's INT8 copy for --backend onnxruntime-int8 / openvino-int8: calibrated on a "
                        "few hundred of your images, checked against float32 on others, cached for every later run.",
            handlers.quantize,
            ("pneumocam quantize pneumocam-cxr 'scans/*.dcm'",
             "pneumocam quantize run/checkpoints/best.ckpt data/Processed/train --count 300 --check-count 100",
             "pneumocam predict pneumocam-cxr folder/ --backend onnxruntime-int8 --batch-size 16"),
            QuantizeConfig, (CHECKPOINT, ("images", {"nargs": "+", "metavar": "IMAGE",
                                                     "help": "DICOM/PNG/JPEG/npy files, folders or quoted globs, "
                                                             "like the images the model will see"}))),
    Command("models", "List the models bundled with pneumocam, or show one's model card.", handlers.models,
            ("pneumocam models", "pneumocam models pneumocam-cxr", "pneumocam models --json",
             "pneumocam predict pneumocam-cxr xray.dcm"), None,
            (("name", {"nargs": "?", "default": None, "choices": BUNDLED_NAMES, "help": "show this model's card"}),
             ("--json", {"action": argparse.BooleanOptionalAction, "default": False,
                         "help": "machine-readable output"}))),
    Command("demo", "Run synth -> prepare -> train -> evaluate -> cam -> localize on a phantom set, on CPU, then the "
                    "bundled real-data model on bundled real X-rays.", handlers.demo,
            ("pneumocam demo", "pneumocam demo my-demo/ --n-images 200 --epochs 2"),
            DemoConfig, (("out", {"nargs": "?", "default": "pneumocam-demo",
                                  "help": "output folder (default ./pneumocam-demo)"}),)),
)


def _examples(lines: tuple[str, ...]) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def closest_flag(flag: str, options: list[str]) -> str | None:
    """The flag a mistyped one most likely meant: a near spelling (--epoch -> --epochs), or the flag made of its
    words' initials (--learning-rate -> --lr)."""
    name = flag.split("=", 1)[0]
    near = difflib.get_close_matches(name, options, n=1, cutoff=0.7)
    if near:
        return near[0]
    initials = "--" + "".join(word[0] for word in name.lstrip("-").split("-") if word)
    return initials if len(initials) > 3 and initials in options else None


class CommandParser(argparse.ArgumentParser):
    """A sub-command's parser: an unknown flag is reported with this command's usage and the closest flag it has
    (argparse would hand it up to the top-level parser, whose usage lists only the commands)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            unknown = next((item for item in extras if item.startswith("-")), extras[0])
            hint = closest_flag(unknown, list(self._option_string_actions)) if unknown.startswith("-") else None
            self.error(f"unrecognized arguments: {' '.join(extras)}" + (f" (did you mean {hint}?)" if hint else ""))
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumocam", allow_abbrev=False,
        description="Pneumonia detection on chest X-rays with a ResNet18 and Class Activation Maps.",
        epilog=_examples(("pneumocam demo pneumocam-demo", "pneumocam prepare rsna/ data/",
                          "pneumocam train data/ run/ --pretrained none")),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pneumocam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=CommandParser)
    for command in COMMANDS:
        p = sub.add_parser(command.name, help=command.summary, description=command.summary, allow_abbrev=False,
                           epilog=_examples(command.examples), formatter_class=argparse.RawDescriptionHelpFormatter)
        for name, kwargs in command.arguments:
            p.add_argument(name, **kwargs)
        if command.config is not None:
            add_config_arguments(p, command.config)
        p.set_defaults(handler=command.handler, command_parser=p)
    return parser
