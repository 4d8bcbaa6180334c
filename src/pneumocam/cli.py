"""The `pneumocam` command: parse arguments -> a config dataclass -> call one stage.

Exit codes: 0 success; 1 a user error (message on stderr, no traceback); 3 finished, but some input
files were rejected or failed (listed in the command's rejected/failed CSV).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pneumocam import __version__
from pneumocam.errors import PneumocamError

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 3
log = logging.getLogger("pneumocam")


DRAWING_COMMANDS = {"evaluate", "calibrate", "cam", "localize", "predict", "serve", "demo", "pacs"}
# subgroups.ATTRIBUTES and calibration.RULES, without importing them (a test keeps them equal)
SUBGROUP_ATTRIBUTES = ("sex", "age_band", "view")
THRESHOLD_RULES = ("sensitivity", "youden")
# inference.METHODS + cam_extra.LIBRARY_METHODS, cam.ALIGNMENTS and data.EVALUATION_SPLITS, spelled out so that
# building the parser imports no torch (a test keeps them equal)
CAM_METHODS = ("cam", "gradcam", "gradcam++", "scorecam", "eigencam", "layercam")
CAM_ALIGNMENTS = ("receptive-field", "block-centre")
EVALUATION_SPLITS = ("auto", "test", "val", "train", "all")
BACKENDS = ("torch", "onnxruntime", "openvino")  # backends.BACKENDS (a test keeps them equal)
BUNDLED_NAMES = ("pneumocam-cxr",)  # checkpoints.BUNDLED_MODELS, without importing torch (a test keeps them equal)
CHECKPOINT_HELP = "a .ckpt written by pneumocam train, or a bundled model's name (pneumocam-cxr; see pneumocam models)"


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _add_inference_options(parser: argparse.ArgumentParser, batch_size: int = 32) -> None:
    parser.add_argument("--batch-size", type=int, default=batch_size,
                        help=f"images per forward pass (default {batch_size})")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")


def _add_backend_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="who runs the network: torch (default), onnxruntime or openvino (CPU; an ONNX export "
                             "made at start-up, same logit and CAM within 1e-4; needs pneumocam[fast])")


def _add_alignment_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--alignment", choices=CAM_ALIGNMENTS, default=None,
                        help="where each 7x7 cell sits in the 224-px image (default: the checkpoint's, which is "
                             "receptive-field for every model pneumocam trains): receptive-field (cell p at "
                             "pixel 32p, the centre of what it sees) or block-centre ((p + 0.5) * 32, as "
                             "cv2.resize and most CAM code place it, ~16 px right of and below the evidence)")


def _add(sub, name: str, help_text: str, examples: str, handler: Callable) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help_text, description=help_text, epilog=examples,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(handler=handler)
    return parser


# --- handlers: each imports its stage lazily so `pneumocam --help` stays fast -------------------

def _synth(args) -> int:
    from pneumocam.synthetic import SynthConfig, synthesize

    out = synthesize(args.out, SynthConfig(args.n_images, args.positive_fraction, args.size, args.seed, args.workers))
    print(f"wrote {args.n_images} phantom DICOMs and labels to {out}")
    return EXIT_OK


def _prepare(args) -> int:
    from pneumocam.prepare import PrepareConfig, prepare

    config = PrepareConfig(args.val_fraction, args.seed, args.workers, args.resize_mode, args.format, args.class_map,
                           args.box_space, args.test_fraction)
    report = prepare(args.sources if len(args.sources) > 1 else args.sources[0], args.out, config)
    print(f"prepared {report.n_written + report.n_resumed} images ({report.n_resumed} resumed) into "
          f"{report.out_dir / 'Processed'}; counts {json.dumps(report.counts)}; mean {report.mean:.4f} "
          f"std {report.std:.4f}; rejected {report.n_rejected}")
    if report.n_rejected:
        print(f"rejected files and reasons: {report.out_dir / 'rejected.csv'}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _log_lightning_once() -> None:
    """`import lightning` gives its logger a console handler of its own that also propagates to the
    root handler set up in main(): every Lightning message would print twice."""
    logging.getLogger("lightning").handlers.clear()


def _train(args) -> int:
    from pneumocam.train import TrainConfig, fit

    _log_lightning_once()
    config = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        optimizer=args.optimizer, schedule=args.schedule, grad_clip=args.grad_clip,
        early_stop_patience=args.early_stop_patience, pos_weight=args.pos_weight,
        balanced_sampling=args.balanced_sampling, augment=args.augment, box_loss_weight=args.box_loss_weight,
        pretrained=args.pretrained, data_stats=args.data_stats, monitor=args.monitor, seed=args.seed,
        num_workers=args.num_workers,
        accelerator=args.accelerator, devices=args.devices, strategy=args.strategy, num_nodes=args.num_nodes,
        precision=args.precision, channels_last=args.channels_last, in_memory=args.in_memory,
        compile=args.compile, deterministic=args.deterministic, resume=args.resume, fast_dev_run=args.fast_dev_run,
    )
    result = fit(args.data, args.run, config)
    if result.is_global_zero:
        print(f"best checkpoint: {result.best_checkpoint} ({args.monitor} {result.best_score}); "
              f"last: {result.last_checkpoint}")
    return EXIT_OK


def _subgroup_attributes(by: str) -> tuple[str, ...] | None:
    """--by: "auto" (every attribute the manifest knows) -> None, "none" -> (), else a comma-separated list."""
    if by == "auto":
        return None
    if by == "none":
        return ()
    names = tuple(n.strip() for n in by.split(",") if n.strip())
    unknown = [n for n in names if n not in SUBGROUP_ATTRIBUTES]
    if unknown:
        raise PneumocamError(f"--by: unknown attribute(s) {unknown}; choose from {', '.join(SUBGROUP_ATTRIBUTES)}")
    return names


def _calibrate(args) -> int:
    from pneumocam.calibrate import CalibrateConfig, calibrate

    config = CalibrateConfig(split=args.split, prevalence=args.prevalence, intercept=args.intercept, rule=args.rule,
                             target_sensitivity=args.target_sensitivity, ood_quantile=args.ood_quantile,
                             ood_train_images=args.ood_train_images, ood_data=args.ood_data,
                             batch_size=args.batch_size, device=args.device, seed=args.seed)
    report = calibrate(args.checkpoint, args.data, args.out, config)
    c, before, after = report["calibration"], report["before"], report["after_cross_fitted"]
    print(f"temperature {c['temperature']:.3f}, intercept {c['intercept']:+.3f}, prevalence shift "
          f"{c['prevalence_shift']:+.3f}")
    crossed = f", {after['ece']:.4f} cross-fitted" if after["ece"] is not None else ""
    print(f"ECE {before['ece']:.4f} -> {report['after_in_sample']['ece']:.4f} in sample{crossed}; Brier "
          f"{before['brier']:.4f} -> {report['after_in_sample']['brier']:.4f} in sample")
    print(f"threshold {report['threshold']:.4f}: {report['threshold_rule']}")
    print(f"out-of-range: distance > {report['ood']['threshold']:.1f} is flagged (held-out false-flag rate "
          f"{report['ood']['held_out_false_flag_rate']:.3f})")
    print(f"wrote {Path(args.out) / 'calibrated.ckpt'} (use it with evaluate, predict, cam, serve), calibration.json, "
          "reliability.png")
    return EXIT_OK


def _evaluate(args) -> int:
    from pneumocam.evaluate import EvalConfig, compare, evaluate

    config = EvalConfig(split=args.split, threshold=args.threshold, target_sensitivity=args.target_sensitivity,
                        threshold_from=args.threshold_from, bootstrap=args.bootstrap, seed=args.seed,
                        batch_size=args.batch_size, device=args.device, report=args.report,
                        by=_subgroup_attributes(args.by), min_subgroup_size=args.min_subgroup_size, maps=args.maps,
                        maps_images=args.maps_images)
    if len(args.checkpoints) > 1:
        result = compare(args.checkpoints, args.data, args.out, config)
        keys = ("accuracy", "precision", "recall", "f1", "specificity", "auroc", "auprc", "brier")
        print("model  " + "".join(f"{k:>12}" for k in keys) + "  checkpoint")
        for row in result["models"]:
            values = "".join(f"{row[k]:>12.4f}" if row[k] is not None else f"{'n/a':>12}" for k in keys)
            print(f"{row['model']:<7}{values}  {row['checkpoint']}")
        for d in result["paired_auroc_differences"]:
            print(f"AUROC(model {d['model']}) - AUROC(model 0) = {d['auroc_difference']:+.4f}, 95% CI "
                  f"[{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}], paired bootstrap p = {d['p_value']:.3f}")
        print(f"wrote {Path(args.out) / 'comparison.json'} and one folder per model")
        return EXIT_OK
    metrics = evaluate(args.checkpoints[0], args.data, args.out, config)
    ci = metrics.get("ci95") or {}
    print(f"{metrics['n']} images ({metrics['n_positive']} pneumonia), threshold {metrics['threshold']}")
    for key in ("accuracy", "precision", "recall", "f1", "specificity", "npv", "auroc", "auprc", "brier", "ece"):
        value = metrics.get(key)
        interval = f"  [{ci[key][0]:.3f}, {ci[key][1]:.3f}]" if ci.get(key) else ""
        print(f"  {key:<12}{value:.4f}{interval}" if value is not None else f"  {key:<12}n/a")
    shortcut = metrics.get("shortcut")
    if shortcut and shortcut["header_only"].get("available"):
        views = ", ".join(f"{v} {r['auroc']:.3f}" for v, r in shortcut["within_view"].items() if r["auroc"] is not None)
        print(f"shortcut check: header-only AUROC {shortcut['header_only']['auroc']:.4f} (model "
              f"{metrics['auroc']:.4f}); model AUROC within view: {views or 'n/a'}")
    if metrics.get("subgroups"):
        groups = metrics["subgroups"]["groups"]
        print(f"subgroups by {', '.join(metrics['subgroups']['by'])}: {len(groups)} groups "
              f"({sum(g['small'] for g in groups)} small), in metrics.json and subgroups.csv")
    for warning in metrics["warnings"]:
        print(f"note: {warning}", file=sys.stderr)
    written = "metrics.json, predictions.csv" + (", plots and report.html" if args.report else "")
    print(f"wrote {written} to {args.out}")
    return EXIT_OK


def _cam(args) -> int:
    from pneumocam.explain import CamConfig, explain_files

    report = explain_files(args.checkpoint, args.images, args.out,
                           CamConfig(args.alpha, args.colormap, args.batch_size, args.device, args.method,
                                     args.workers, args.alignment))
    print(f"wrote {len(report.rows)} CAM overlays and maps to {report.out_dir} (index: cams.csv)")
    if report.failures:
        print(f"{len(report.failures)} inputs could not be read: {report.out_dir / 'failed.csv'}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def _localize(args) -> int:
    from pneumocam.localize import LocalizeConfig, localize

    config = LocalizeConfig(split=args.split, allow_training_boxes=args.allow_training_boxes,
                            methods=tuple(args.methods), batch_size=args.batch_size,
                            seed=args.seed, randomize_check=args.randomize_check, device=args.device,
                            alignment=args.alignment, faithfulness=args.faithfulness, road=args.road,
                            replacement=args.replacement, export=args.export)
    result = localize(args.checkpoint, args.data, args.out, config)
    named = [*result["methods"].items(), ("random map", result["baseline_random"]),
             ("centre prior", result["baseline_centre"])]
    if result["baseline_box_prior"]:
        named.append(("box prior", result["baseline_box_prior"]))
    rows = [(name, s["pointing_game"], s["mean_iou"], s["hit_rate_iobb"]["0.25"]) for name, s in named]
    weight = result["box_loss_weight"]
    trained = f"box-guided model (weight {weight}, its training split's boxes)" if weight else "labels-only model"
    print(f"{result['n_images']} images with boxes ({result['split']} split); {trained}")
    if result["includes_training_boxes"]:
        print("note: these images include the training split, so the scores are not those of unseen images")
    print(f"{'method':<14}{'pointing':>10}{'95% CI':>15}{'IoU@0.5':>10}{'hit@IoBB.25':>13}")
    for (name, pointing, iou, hit), (_, summary) in zip(rows, named, strict=True):
        ci = summary["ci95"]["pointing_game"]
        print(f"{name:<14}{pointing:>10.3f}{f'[{ci[0]:.2f}, {ci[1]:.2f}]':>15}{iou:>10.3f}{hit:>13.3f}")
    for method, summary in result["methods"].items():
        margin = summary.get("margin_over_box_prior", {}).get("pointing_game")
        if margin:
            print(f"{method}: pointing game - box prior = {margin['mean']:+.3f} "
                  f"[{margin['ci95'][0]:+.3f}, {margin['ci95'][1]:+.3f}]")
    faithful = result.get("faithfulness")
    if faithful:
        kinds = [k for k in ("deletion", "insertion", "road_morf", "road_lerf") if k in faithful["maps"]["cam"]
                 ] if "cam" in faithful["maps"] else ["deletion", "insertion"]
        print(f"faithfulness (area under the probability curve; deletion and ROAD MoRF: lower is better; "
              f"insertion and ROAD LeRF: higher), {faithful['wall_time_s']:.0f} s:")
        print(f"{'map':<14}" + "".join(f"{k:>12}" for k in kinds))
        for name, kinds_ in faithful["maps"].items():
            print(f"{name:<14}" + "".join(f"{kinds_[k]['probability']:>12.3f}" for k in kinds))
    check = result.get("randomization_check")
    if check:
        for name, c in check.items():
            verdict = "passed" if c["passed"] else "FAILED"
            print(f"randomisation check {name}: rank correlation {c['mean_rank_correlation']:.3f} -> {verdict}")
    print(f"wrote {Path(args.out) / 'localization.json'}, localization.csv and localization_grid.png")
    failed = check and not all(c["passed"] for c in check.values())
    return EXIT_PARTIAL if failed else EXIT_OK


def _predict(args) -> int:
    from pneumocam.predict import PredictConfig, run_predict

    config = PredictConfig(args.threshold, args.batch_size, args.device, args.overlays, args.format, args.backend,
                           args.dicom_out)
    rows, failures, text = run_predict(args.checkpoint, args.inputs, args.out, config)
    if text:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        print(f"wrote {len(rows)} predictions to {args.out}", file=sys.stderr)
    for failure in failures:
        print(f"failed: {failure['source']}: {failure['reason']}", file=sys.stderr)
    if not rows and failures:
        return EXIT_ERROR
    return EXIT_PARTIAL if failures else EXIT_OK


def _serve(args) -> int:
    from pneumocam.server import ServeConfig, serve

    token = _token(args.token_env)
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        log.warning("serving on %s without a token: anyone who can reach this address can upload images", args.host)
    config = ServeConfig(token, args.max_upload_mb, args.max_concurrency, args.max_queue, args.max_batch,
                         args.max_wait_ms)
    serve(args.checkpoint, args.host, args.port, config, args.device, args.backend)
    return EXIT_OK


def _token(env_name: str | None) -> str | None:
    import os

    if not env_name:
        return None
    token = os.environ.get(env_name)
    if not token:
        raise PneumocamError(f"--token-env {env_name}: that environment variable is empty or unset")
    return token


def _pacs(args) -> int:
    from pneumocam.pacs import PacsConfig, watch

    modalities = tuple(m.strip().upper() for m in args.modalities.split(",") if m.strip())
    config = PacsConfig(modalities, args.max_attempts, args.interval)
    counts = watch(args.checkpoint, args.url, args.state, config, args.once, _token(args.token_env), args.device,
                   args.backend)
    print(f"{counts['new_studies']} new studies: {counts['done']} done ({counts['images']} images), "
          f"{counts['failed']} failed; state in {args.state}")
    return EXIT_PARTIAL if counts["failed"] else EXIT_OK


def _export(args) -> int:
    from pneumocam.export import ExportConfig, export_model

    report = export_model(args.checkpoint, args.out, ExportConfig(args.format, args.tolerance))
    print(f"exported {args.format} model to {args.out} (description: {args.out}.json); parity with PyTorch: "
          f"max |diff| logit {report['max_abs_diff_logit']:.2e}, feature map {report['max_abs_diff_feature_map']:.2e}")
    return EXIT_OK


def _demo(args) -> int:
    from pneumocam.demo import run_demo, scaled_config

    _log_lightning_once()
    summary = run_demo(args.out, scaled_config(args.n_images, args.epochs, args.seed))
    m = summary["metrics"]
    print(f"\npneumocam demo finished in {summary['total_s']:.0f} s ({summary['timings_s']})")
    print(f"validation ({m['n']} images, {m['n_positive']} pneumonia): AUROC {m['auroc']:.3f}  "
          f"accuracy {m['accuracy']:.3f}  precision {m['precision']:.3f}  recall {m['recall']:.3f}  f1 {m['f1']:.3f}")
    print(f"checkpoint: {summary['best_checkpoint']}")
    print(f"metrics:    {Path(summary['out_dir']) / 'eval' / 'metrics.json'}")
    print(f"CAM images: {Path(summary['out_dir']) / 'cam'}")
    loc = summary["localization"]
    print(f"localisation ({loc['n_images']} boxed images): CAM pointing game {loc['pointing_game']:.3f} "
          f"(random map {loc['random_pointing_game']:.3f}), mean IoU {loc['mean_iou']:.3f} "
          f"-> {Path(summary['out_dir']) / 'localize'}")
    real = summary["real_examples"]
    shown = ", ".join(f"{r['source']} {r['probability']:.3f}" for r in real["images"])
    print(f"real X-rays with the bundled model {real['model']} (p(pneumonia)): {shown} "
          f"-> {Path(summary['out_dir']) / 'real'}")
    return EXIT_OK


def _models(args) -> int:
    from pneumocam.models import describe, model_card

    if args.name:
        if args.json:
            print(json.dumps(describe(args.name), indent=2))
        else:
            print(model_card(args.name))
        return EXIT_OK
    described = [describe(name) for name in BUNDLED_NAMES]
    if args.json:
        print(json.dumps(described, indent=2))
        return EXIT_OK
    for model in described:
        val = model["validation"]
        scores = "; ".join(f"{source} val AUROC {m['auroc']:.3f}" for source, m in val.items())
        print(f"{model['name']:<16}{model['size_mb']:>6.1f} MB  {model['summary']}\n{'':<24}{scores}")
    print("\nthe whole card: pneumocam models NAME (or --json)")
    return EXIT_OK


# --- parser -----------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pneumocam", description="Pneumonia detection on chest X-rays with a ResNet18 and Class Activation Maps.",
        epilog=_examples("pneumocam demo pneumocam-demo", "pneumocam prepare rsna/ data/",
                         "pneumocam train data/ run/ --pretrained none"),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"pneumocam {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _add(sub, "synth", "Make a phantom chest X-ray set in the RSNA layout (JPEG DICOMs + labels CSV with boxes).",
             _examples("pneumocam synth phantoms/", "pneumocam synth phantoms/ --n-images 200 --seed 3"), _synth)
    p.add_argument("out", help="output folder (gets stage_2_train_images/ and stage_2_train_labels.csv)")
    p.add_argument("--n-images", type=int, default=800, help="number of images (default 800)")
    p.add_argument("--positive-fraction", type=float, default=0.35, help="share of pneumonia images (default 0.35)")
    p.add_argument("--size", type=int, default=1024, help="image side in pixels (default 1024, like RSNA)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")

    p = _add(sub, "prepare", "Turn a data set into 224x224 float .npy files under OUT/Processed/{train,val}/{0,1}/.",
             _examples("pneumocam prepare rsna-pneumonia-detection-challenge/ data/",
                       "pneumocam prepare chest_xray/ kermany-data/ --class-map NORMAL=0,PNEUMONIA=1",
                       "pneumocam prepare rsna-as-png-512/ data/            # boxes follow the image size",
                       "pneumocam prepare pneumoniamnist.npz mnist-data/",
                       "pneumocam prepare kermany/ rsna/ both-data/        # two sources, one data set",
                       "pneumocam prepare phantoms/ data/ --val-fraction 0.2 --seed 1"), _prepare)
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="RSNA layout (stage_2_train_images/ + stage_2_train_labels.csv), class folders "
                        "(<root>/[train|val|test/]<CLASS>/*) or a MedMNIST .npz; several go into one data set, each "
                        "split as if prepared alone")
    p.add_argument("out", help="output folder (Processed/, manifest.csv, boxes.csv, stats.json, rejected.csv)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="share of patients in validation (default 0.2)")
    p.add_argument("--test-fraction", type=float, default=0.0,
                   help="share of patients in a test split carved like validation (default 0; a source's own "
                        "test split is kept instead)")
    p.add_argument("--seed", type=int, default=0, help="seed of the stratified validation split")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--resize-mode", choices=("pad", "stretch"), default="pad",
                   help="non-square images: pad to square then resize (default) or stretch")
    p.add_argument("--format", choices=("auto", "rsna", "folders", "medmnist"), default="auto",
                   help="source layout (default: detected)")
    p.add_argument("--class-map", default=None,
                   help="class folders: folder name -> label, e.g. NORMAL=0,PNEUMONIA=1 (the default)")
    p.add_argument("--box-space", type=float, default=None,
                   help="RSNA layout: side of the pixel space the labels' boxes are given in (default 1024, the "
                        "challenge's); boxes are scaled by each image's size / this")

    p = _add(sub, "train", "Train PneumoniaNet with PyTorch Lightning; writes RUN/checkpoints/{best,last}.ckpt.",
             _examples("pneumocam train data/ run/ --pretrained none --epochs 10",
                       "pneumocam train data/ run/ --pretrained resnet18-f37072fd.pth --augment original",
                       "pneumocam train data/ run/ --box-loss-weight 1  # RSNA boxes steer the CAM",
                       "pneumocam train data/ run/ --resume            # after an interruption",
                       "pneumocam train data/ run/ --devices 4 --strategy ddp   # several GPUs"), _train)
    p.add_argument("data", help="prepared data folder (with Processed/train and Processed/val)")
    p.add_argument("run", help="run folder for checkpoints, config.json and logs")
    p.add_argument("--epochs", type=int, default=10, help="default 10")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of Adam (default 1e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="default 1e-4")
    p.add_argument("--optimizer", choices=("adam", "adamw"), default="adam", help="default adam")
    p.add_argument("--schedule", choices=("cosine", "onecycle", "plateau", "none"), default="cosine",
                   help="learning-rate schedule: cosine after a linear warm-up (default), onecycle, "
                        "plateau (halve on a stalled --monitor), none")
    p.add_argument("--grad-clip", type=float, default=0.0, help="clip the gradient norm (default 0 = off)")
    p.add_argument("--early-stop-patience", type=int, default=0,
                   help="stop after N epochs without improvement of --monitor (default 0 = off)")
    p.add_argument("--balanced-sampling", action=argparse.BooleanOptionalAction, default=False,
                   help="sample both classes equally often (with replacement)")
    p.add_argument("--pos-weight", default="auto", help="BCE positive-class weight: auto = n_neg/n_pos, or a number")
    p.add_argument("--augment", choices=("original", "shift", "none"), default="original",
                   help="original: affine ±5°, translate 5%%, scale 0.9-1.1 + random resized crop 0.35-1; "
                        "shift: affine ±5°, translate 10%%, scale 0.9-1.1, no crop")
    p.add_argument("--box-loss-weight", type=float, default=0.0,
                   help="weight of a loss that steers the CAM into the boxes of training images that have them "
                        "(DATA/boxes.csv, e.g. RSNA); it adds no layer, so the CAM still explains the logit "
                        "exactly (default 0 = labels only)")
    p.add_argument("--pretrained", default="imagenet",
                   help="imagenet (download via torchvision), none (from scratch), or a resnet18 state-dict path")
    p.add_argument("--data-stats", action=argparse.BooleanOptionalAction, default=None,
                   help="normalise with the data set's own mean/std from stats.json (--no-data-stats: RSNA "
                        "0.49/0.248; default: stats.json when prepare wrote one, else 0.49/0.248)")
    p.add_argument("--monitor", choices=("val_loss", "val_auroc", "val_acc"), default="val_loss",
                   help="validation metric that picks best.ckpt (default val_loss)")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and augmentation")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator: auto, cpu, gpu")
    p.add_argument("--devices", default="auto", help="Lightning devices: auto, a count, or a list like 0,1")
    p.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp for several GPUs or nodes")
    p.add_argument("--num-nodes", type=int, default=1, help="machines for DDP (default 1)")
    p.add_argument("--precision", default="auto",
                   help="auto (bf16-mixed or 16-mixed on a GPU, 32-true on CPU) or a Lightning precision")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="channels-last memory format (default on; faster on CPU and GPU here)")
    p.add_argument("--in-memory", choices=("auto", "on", "off"), default="auto",
                   help="hold the data in memory and augment on the device (auto: on a GPU)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False, help="torch.compile the network")
    p.add_argument("--deterministic", choices=("auto", "on", "off"), default="auto",
                   help="deterministic algorithms (auto: on for CPU, so a seed repeats a run exactly; off on a GPU, "
                        "where cuDNN autotuning is faster)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=False,
                   help="continue from RUN/checkpoints/last.ckpt (weights, optimizer, schedule, epoch)")
    p.add_argument("--fast-dev-run", action=argparse.BooleanOptionalAction, default=False,
                   help="one training and one validation batch, to check the set-up")

    p = _add(sub, "evaluate", "Evaluate checkpoints on a prepared split: metrics.json, predictions.csv, plots, "
                              "report.html; with several checkpoints, a comparison table.",
             _examples("pneumocam evaluate run/checkpoints/best.ckpt data/ eval/",
                       "pneumocam evaluate run/checkpoints/best.ckpt data/ eval/ --split test --threshold-from val",
                       "pneumocam evaluate runA/checkpoints/best.ckpt runB/checkpoints/best.ckpt data/ compare/"),
             _evaluate)
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="one or more checkpoints: " + CHECKPOINT_HELP)
    p.add_argument("data", help="prepared data folder")
    p.add_argument("out", help="output folder")
    p.add_argument("--split", choices=EVALUATION_SPLITS, default="auto",
                   help="split under DATA/Processed (default auto: test when DATA has one, else val, which the "
                        "report then flags as the split that chose the checkpoint)")
    p.add_argument("--threshold", type=float, default=None,
                   help="decision threshold on the probability (default: the checkpoint's, 0.5 unless pneumocam "
                        "calibrate chose one)")
    p.add_argument("--target-sensitivity", type=float, default=0.9,
                   help="operating point: the highest threshold reaching this sensitivity (default 0.9)")
    p.add_argument("--threshold-from", default=None,
                   help="split on which the Youden/target-sensitivity thresholds are chosen (default: --split)")
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write the plots, the CAM gallery and report.html (default on)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for 95%% CIs (0 = none)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--by", default="auto",
                   help="subgroups: a comma-separated list of sex, age_band, view (each value and each pair of "
                        "values); default auto: every one the manifest knows; none: no subgroup table")
    p.add_argument("--min-subgroup-size", type=int, default=20,
                   help="groups with fewer images are shown but flagged (default 20)")
    p.add_argument("--maps", action=argparse.BooleanOptionalAction, default=True,
                   help="where the split has boxes: the 'Can you trust these maps?' section (localisation with CIs, "
                        "deletion/insertion curves, randomisation check, worst misses; default on)")
    p.add_argument("--maps-images", type=int, default=100,
                   help="boxed images the maps section scores at most, a seeded sample (default 100; "
                        "pneumocam localize scores them all)")
    _add_inference_options(p)

    p = _add(sub, "calibrate", "Calibrate a checkpoint on a calibration split: temperature (+ intercept), a "
                               "prevalence correction, a threshold by a stated rule and the out-of-range detector, "
                               "written into a copy of the checkpoint.",
             _examples("pneumocam calibrate run/checkpoints/best.ckpt data/ cal/",
                       "pneumocam calibrate pneumocam-cxr rsna-data/ cal/ --rule youden --ood-data both-data/",
                       "pneumocam calibrate run/checkpoints/best.ckpt data/ cal/ --prevalence 0.1 "
                       "--target-sensitivity 0.95",
                       "pneumocam evaluate cal/calibrated.ckpt data/ eval/ --split test"), _calibrate)
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("data", help="prepared data folder")
    p.add_argument("out", help="output folder (calibrated.ckpt, calibration.pt, calibration.json, reliability.png)")
    p.add_argument("--split", default="val", choices=("val", "train"),
                   help="calibration split (default val; never test, which must stay unseen)")
    p.add_argument("--prevalence", type=float, default=None,
                   help="prevalence where the model will be used: shifts the intercept from the calibration "
                        "split's prevalence to this one (default: keep the split's)")
    p.add_argument("--intercept", action=argparse.BooleanOptionalAction, default=True,
                   help="fit an intercept with the temperature (default on; --no-intercept: temperature alone)")
    p.add_argument("--rule", choices=THRESHOLD_RULES, default="sensitivity",
                   help="threshold rule: sensitivity (the highest threshold reaching --target-sensitivity, default) "
                        "or youden")
    p.add_argument("--target-sensitivity", type=float, default=0.9, help="for --rule sensitivity (default 0.9)")
    p.add_argument("--ood-quantile", type=float, default=0.99,
                   help="out-of-range threshold: this quantile of the calibration split's feature distances "
                        "(default 0.99)")
    p.add_argument("--ood-train-images", type=int, default=2000,
                   help="training images sampled for the out-of-range feature distribution (default 2000)")
    p.add_argument("--ood-data", default=None,
                   help="prepared data the model was trained on, when it is not DATA: the out-of-range detector is "
                        "fitted on its train split and thresholded on its --split (default DATA)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling and the cross-fitting folds")
    _add_inference_options(p)

    p = _add(sub, "cam", "Class Activation Maps: one side-by-side PNG per image plus the raw 7x7 and 224x224 maps.",
             _examples("pneumocam cam run/checkpoints/best.ckpt xray.dcm --out cams/",
                       "pneumocam cam run/checkpoints/best.ckpt data/Processed/val/1 --out cams/ --alpha 0.4"), _cam)
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="DICOM, PNG, JPEG or .npy files, or folders")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity in [0, 1] (default 0.5)")
    p.add_argument("--colormap", default="jet", help="matplotlib colour map (default jet)")
    p.add_argument("--method", choices=CAM_METHODS,
                   default="cam", help="cam (from the forward pass, default), gradcam or gradcam++ (one backward "
                                       "pass); scorecam, eigencam, layercam need pip install 'pneumocam[cam-extra]'")
    p.add_argument("--workers", type=int, default=None, help="processes drawing the PNGs (default: all cores)")
    _add_alignment_option(p)
    _add_inference_options(p)

    p = _add(sub, "localize", "Score CAM / Grad-CAM maps against ground-truth boxes (pointing game, IoU, IoBB, "
                              "pixel AUPRC, with CIs and baselines) and, with --faithfulness, whether they drive "
                              "the logit.",
             _examples("pneumocam localize run/checkpoints/best.ckpt data/ loc/",
                       "pneumocam localize run/checkpoints/best.ckpt data/ loc/ --split val --randomize-check",
                       "pneumocam localize pneumocam-cxr rsna-data/ loc/ --faithfulness --export chexlocalize"),
             _localize)
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("data", help="prepared data folder with boxes.csv")
    p.add_argument("out", help="output folder (localization.json, localization.csv, localization_grid.png)")
    p.add_argument("--split", choices=EVALUATION_SPLITS, default="auto",
                   help="which boxed images (default auto: test when DATA has one, else val; never the training "
                        "boxes of a box-guided model unless --allow-training-boxes)")
    p.add_argument("--allow-training-boxes", action=argparse.BooleanOptionalAction, default=False,
                   help="let --split train/all score a box-guided model on the boxes it was trained on")
    p.add_argument("--methods", nargs="+", choices=CAM_METHODS,
                   default=["cam", "gradcam", "gradcam++"],
                   help="saliency methods to score (default the three built-in ones; scorecam, eigencam and layercam "
                        "need pneumocam[cam-extra])")
    p.add_argument("--randomize-check", action=argparse.BooleanOptionalAction, default=False,
                   help="model-randomisation sanity check: re-initialise layer4+fc, maps must change "
                        "(exit code 3 if a method fails)")
    p.add_argument("--faithfulness", action=argparse.BooleanOptionalAction, default=False,
                   help="deletion and insertion curves (10 steps) and ROAD (MoRF and LeRF at 10-90%%) of the "
                        "pneumonia logit and probability, for every method and baseline")
    p.add_argument("--road", action=argparse.BooleanOptionalAction, default=True,
                   help="with --faithfulness, include ROAD (default on; its imputation is the slow part)")
    p.add_argument("--replacement", choices=("blur", "mean"), default="blur",
                   help="what deleted pixels become in deletion/insertion: a blurred copy (default) or the mean")
    p.add_argument("--export", choices=("chexlocalize",), default=None,
                   help="also write the maps and boxes in CheXlocalize's input format to OUT/chexlocalize/")
    p.add_argument("--seed", type=int, default=0, help="seed of the random baseline and the randomisation")
    _add_alignment_option(p)
    _add_inference_options(p, batch_size=16)

    p = _add(sub, "predict", "Pneumonia probabilities for files, folders (recursive) or glob patterns.",
             _examples("pneumocam predict run/checkpoints/best.ckpt xray.dcm",
                       "pneumocam predict run/checkpoints/best.ckpt 'scans/**/*.dcm' --out preds/ --overlays",
                       "pneumocam predict run/checkpoints/best.ckpt folder/ --format json --threshold 0.3",
                       "pneumocam predict pneumocam-cxr 'scans/*.dcm' --out preds/ --dicom-out results/",
                       "pneumocam predict pneumocam-cxr folder/ --backend onnxruntime --batch-size 16"), _predict)
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="DICOM/PNG/JPEG/npy files, folders or quoted globs")
    p.add_argument("--out", default=None, help="output folder (default: print the table to stdout)")
    p.add_argument("--format", choices=("csv", "json"), default="csv", help="table format (default csv)")
    p.add_argument("--overlays", action=argparse.BooleanOptionalAction, default=False,
                   help="also write CAM overlay PNGs to OUT/overlays/ (needs --out)")
    p.add_argument("--dicom-out", default=None, metavar="DIR",
                   help="for DICOM inputs, also write a Secondary Capture (image + CAM overlay) and a structured "
                        "report per image to DIR, in the source's Study (needs pneumocam[dicom])")
    p.add_argument("--threshold", type=float, default=None, help="decision threshold (default: the checkpoint's)")
    _add_inference_options(p)
    _add_backend_option(p)

    p = _add(sub, "serve", "Web service and page: upload an X-ray, see the probability and the CAM.",
             _examples("pneumocam serve run/checkpoints/best.ckpt",
                       "PNEUMOCAM_TOKEN=secret pneumocam serve run/checkpoints/best.ckpt --port 8080 "
                       "--token-env PNEUMOCAM_TOKEN",
                       "pneumocam serve pneumocam-cxr --backend onnxruntime --max-batch 16 --max-wait-ms 50"), _serve)
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="default 8000")
    p.add_argument("--token-env", default=None, help="name of an environment variable holding a bearer token")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest accepted upload (default 32 MB)")
    p.add_argument("--max-concurrency", type=int, default=2, help="uploads decoded at once (default 2)")
    p.add_argument("--max-queue", type=int, default=32, help="requests waiting beyond those; more get 503 "
                                                              "(default 32)")
    p.add_argument("--max-batch", type=int, default=16,
                   help="concurrent requests share one forward pass of up to this many images (default 16)")
    p.add_argument("--max-wait-ms", type=float, default=50.0,
                   help="how long a batch may wait for requests still being decoded (default 50 ms; a lone "
                        "request never waits)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    _add_backend_option(p)

    p = _add(sub, "pacs", "Watch a PACS over DICOMweb: predict each new CR/DX study and store a Secondary Capture "
                          "and a structured report back into it (needs pneumocam[pacs]).",
             _examples("pneumocam pacs pneumocam-cxr http://localhost:8042/dicom-web --once",
                       "pneumocam pacs pneumocam-cxr https://pacs.example.org/dicom-web --state /var/lib/pneumocam/"
                       "pacs.json --interval 30 --token-env PACS_TOKEN"), _pacs)
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("url", help="the DICOMweb base URL (QIDO-RS, WADO-RS and STOW-RS below it)")
    p.add_argument("--state", default="pneumocam-pacs-state.json",
                   help="file recording the studies done, so none is processed twice (default "
                        "pneumocam-pacs-state.json)")
    p.add_argument("--once", action="store_true", help="one pass, then exit (default: watch until interrupted)")
    p.add_argument("--interval", type=float, default=60.0, help="seconds between passes when watching (default 60)")
    p.add_argument("--modalities", default="CR,DX", help="modalities of the series to read (default CR,DX)")
    p.add_argument("--max-attempts", type=int, default=3, help="passes a failing study is tried (default 3)")
    p.add_argument("--token-env", default=None, help="name of an environment variable holding a bearer token")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    _add_backend_option(p)

    p = _add(sub, "export", "Export a checkpoint to ONNX or TorchScript (outputs logit and feature map), "
                            "with a parity check against PyTorch.",
             _examples("pneumocam export run/checkpoints/best.ckpt model.onnx",
                       "pneumocam export run/checkpoints/best.ckpt model.pt --format torchscript"), _export)
    p.add_argument("checkpoint", help=CHECKPOINT_HELP)
    p.add_argument("out", help="output file (a description OUT.json is written beside it)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default onnx")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted |difference| (default 1e-4)")

    p = _add(sub, "models", "List the models bundled with pneumocam, or show one's model card.",
             _examples("pneumocam models", "pneumocam models pneumocam-cxr", "pneumocam models --json",
                       "pneumocam predict pneumocam-cxr xray.dcm"), _models)
    p.add_argument("name", nargs="?", default=None, choices=BUNDLED_NAMES, help="show this model's card")
    p.add_argument("--json", action=argparse.BooleanOptionalAction, default=False, help="machine-readable output")

    p = _add(sub, "demo", "Run synth -> prepare -> train -> evaluate -> cam -> localize on a phantom set, on CPU, "
                          "then the bundled real-data model on bundled real X-rays.",
             _examples("pneumocam demo", "pneumocam demo my-demo/ --n-images 200 --epochs 2"), _demo)
    p.add_argument("out", nargs="?", default="pneumocam-demo", help="output folder (default ./pneumocam-demo)")
    p.add_argument("--n-images", type=int, default=None, help="phantom images (default 800)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 8)")
    p.add_argument("--seed", type=int, default=None, help="seed for every stage (default 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in DRAWING_COMMANDS:  # the others skip matplotlib's import time
        import matplotlib

        matplotlib.use("Agg")  # the CLI only writes figures to files; never open a window
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for chatty in ("highdicom", "dicomweb_client"):  # an INFO line per copied module, per request
        logging.getLogger(chatty).setLevel(logging.WARNING)
    if not args.verbose:
        # pydicom logs a traceback for each decoder plugin that fails before another one succeeds, or before
        # the reader reports the file; the reason that matters reaches the user as one line naming the file
        # (a filter on the handlers, not a level: importing pydicom sets its loggers' levels again)
        for handler in logging.getLogger().handlers:
            handler.addFilter(lambda r: not r.name.startswith("pydicom") or r.levelno >= logging.CRITICAL)
    if getattr(args, "workers", 1) is None:
        import os

        args.workers = os.cpu_count() or 1
    try:
        return args.handler(args)
    except PneumocamError as exc:
        print(f"pneumocam {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"pneumocam {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
