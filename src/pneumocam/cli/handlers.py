"""What each `pneumocam` command runs: the step, with its config, then a short summary on stdout.

Each handler imports its step lazily, so `pneumocam --help` imports no torch.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from pneumocam.errors import require_extra

EXIT_OK, EXIT_ERROR, EXIT_PARTIAL = 0, 1, 3


def synth(args, config) -> int:
    from pneumocam.data import synthesize

    out = synthesize(args.out, config)
    print(f"wrote {config.n_images} phantom DICOMs and labels to {out}")
    return EXIT_OK


def prepare(args, config) -> int:
    from pneumocam.commands.prepare import prepare

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


def train(args, config) -> int:
    from pneumocam.commands.train import fit

    _log_lightning_once()
    result = fit(args.data, args.run, config)
    if result.is_global_zero:
        print(f"best checkpoint: {result.best_checkpoint} ({config.monitor} {result.best_score}); "
              f"last: {result.last_checkpoint}")
    return EXIT_OK


def calibrate(args, config) -> int:
    from pneumocam.commands.calibrate import calibrate

    report = calibrate(args.checkpoint, args.data, args.out, config)
    c, before, after = report["calibration"], report["before"], report["after_cross_fitted"]
    print(f"temperature {c['temperature']:.3f}, intercept {c['intercept']:+.3f}, prevalence shift "
          f"{c['prevalence_shift']:+.3f}")
    crossed = f", {after['ece']:.4f} cross-fitted" if after["ece"] is not None else ""
    print(f"ECE {before['ece']:.4f} -> {report['after_in_sample']['ece']:.4f} in sample{crossed}; Brier "
          f"{before['brier']:.4f} -> {report['after_in_sample']['brier']:.4f} in sample")
    if one := report.get("after_cross_fitted_one_calibration"):
        print(f"  (cross-fitted with one calibration for every view: ECE {one['ece']:.4f})")
    for view, c in report["calibration_by_view"].items():
        print(f"  view {view}: temperature {c['temperature']:.3f}, intercept {c['intercept']:+.3f} ({c['n']} images)")
    print(f"threshold {report['threshold']:.4f}: {report['threshold_rule']}")
    for view, row in report["thresholds_by_view"].items():
        print(f"  view {view}: threshold {row['threshold']:.4f} ({row['n']} images, {row['n_positive']} pneumonia; "
              f"in sample sensitivity {row['sensitivity_in_sample']:.2f}, specificity "
              f"{row['specificity_in_sample']:.2f})")
    print(f"out-of-range: distance > {report['ood']['threshold']:.1f} is flagged (held-out false-flag rate "
          f"{report['ood']['held_out_false_flag_rate']:.3f})")
    print(f"wrote {Path(args.out) / 'calibrated.ckpt'} (use it with evaluate, predict, cam, serve), calibration.json, "
          "reliability.png")
    return EXIT_OK


def evaluate(args, config) -> int:
    from pneumocam.commands.evaluate import compare, evaluate

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
    written = "metrics.json, predictions.csv" + (", plots and report.html" if config.report else "")
    print(f"wrote {written} to {args.out}")
    return EXIT_OK


def cam(args, config) -> int:
    from pneumocam.commands.cam import explain_files

    report = explain_files(args.checkpoint, args.images, args.out, config)
    print(f"wrote {len(report.rows)} CAM overlays and maps to {report.out_dir} (index: cams.csv)")
    if report.failures:
        print(f"{len(report.failures)} inputs could not be read: {report.out_dir / 'failed.csv'}", file=sys.stderr)
        return EXIT_PARTIAL
    return EXIT_OK


def localize(args, config) -> int:
    from pneumocam.commands.localize import localize

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


def predict(args, config) -> int:
    from pneumocam.commands.predict import run_predict

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


def serve(args, config) -> int:
    require_extra("pneumocam serve", "serve", "fastapi", "uvicorn", "multipart")
    from pneumocam.deploy import serve

    serve(args.checkpoint, config)
    return EXIT_OK


def pacs(args, config) -> int:
    require_extra("pneumocam pacs", "pacs", "dicomweb_client", "highdicom")
    from pneumocam.commands.pacs import watch

    counts = watch(args.checkpoint, args.url, config)
    print(f"{counts['studies']} studies: {counts['images']} new images done, {counts['skipped']} skipped, "
          f"{counts['failed']} failed; state in {config.state}")
    return EXIT_PARTIAL if counts["failed"] else EXIT_OK


def export(args, config) -> int:
    require_extra("pneumocam export", "export", "onnx", "onnxruntime")
    from pneumocam.commands.export import export_model

    report = export_model(args.checkpoint, args.out, config)
    print(f"exported {config.format} model to {args.out} (description: {args.out}.json); parity with PyTorch: "
          f"max |diff| logit {report['max_abs_diff_logit']:.2e}, feature map {report['max_abs_diff_feature_map']:.2e}")
    return EXIT_OK


def quantize(args, config) -> int:
    require_extra("pneumocam quantize", "fast", "onnx", "onnxruntime")
    from pneumocam.commands.quantize import quantize_model
    from pneumocam.deploy import description_path

    made = quantize_model(args.checkpoint, args.images, config)
    calibration = made["calibration"]
    when = f"cached, made {made['created']}" if made["cached"] else "made"
    print(f"INT8 copy of {made['model']}: {made['path']} ({when} from {calibration['count']} calibration images; "
          f"description: {description_path(Path(made['path']))})")
    if check := made.get("check"):
        print(f"against float32 on {check['n']} other images: largest probability difference "
              f"{check['max_abs_probability_difference']:.4f}, calls changed {check['calls_changed']} of {check['n']}, "
              f"CAM Spearman min {check['min_cam_spearman']:.3f} (median {check['median_cam_spearman']:.3f})")
    if made["skipped"]:
        print(f"{len(made['skipped'])} unreadable inputs skipped (listed in the description)")
    return EXIT_OK


def demo(args, config) -> int:
    from pneumocam.commands.demo import run_demo

    _log_lightning_once()
    summary = run_demo(args.out, config)
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


def models(args, config) -> int:
    from pneumocam.model import BUNDLED_MODELS, describe, model_card

    if args.name:
        if args.json:
            print(json.dumps(describe(args.name), indent=2))
        else:
            print(model_card(args.name))
        return EXIT_OK
    described = [describe(name) for name in BUNDLED_MODELS]
    if args.json:
        print(json.dumps(described, indent=2))
        return EXIT_OK
    for model in described:
        val = model["validation"]
        scores = "; ".join(f"{source} val AUROC {m['auroc']:.3f}" for source, m in val.items())
        if crossed := model["cross_validation"]:
            auroc = crossed["summary"]["auroc"]
            scores = f"adult AUROC {auroc['mean']:.3f} ± {auroc['sd']:.3f} ({crossed['k']}-fold CV); {scores}"
        print(f"{model['name']:<16}{model['size_mb']:>6.1f} MB  {model['summary']}\n{'':<24}{scores}")
    print("\nthe whole card: pneumocam models NAME (or --json)")
    return EXIT_OK


