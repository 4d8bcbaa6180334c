"""The evaluation report as one self-contained HTML page: every image is inlined as base64, no
scripts, no external assets, so it opens offline from a single file and can be archived as is."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence

TABLE_METRICS = ("accuracy", "precision", "recall", "specificity", "f1", "npv", "balanced_accuracy",
                 "auroc", "auprc", "brier")
STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ccc;padding:.3em .7em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
.warn{background:#fff4d6;border:1px solid #e0b84c;padding:.6em 1em;margin:.6em 0}
.plots img{width:48%;min-width:320px;margin:.5%;border:1px solid #eee}
.gallery{display:flex;flex-wrap:wrap;gap:8px} .gallery figure{margin:0;width:24%;min-width:220px}
.gallery img{width:100%} figcaption{font-size:.8em;color:#555}
details pre{background:#f7f7f7;padding:.8em;overflow:auto;font-size:.8em}
"""


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}" if isinstance(value, float) else html.escape(str(value))


def _metrics_table(metrics: dict) -> str:
    rows = []
    for name in TABLE_METRICS:
        ci = (metrics.get("ci95") or {}).get(name)
        interval = f"{ci[0]:.3f} – {ci[1]:.3f}" if ci else "n/a"
        rows.append(f"<tr><td>{name}</td><td>{_fmt(metrics.get(name))}</td><td>{interval}</td></tr>")
    if metrics.get("ece") is not None:
        rows.append(f"<tr><td>ece</td><td>{_fmt(metrics['ece'])}</td><td>n/a</td></tr>")
    return "<table><tr><th>metric</th><th>value</th><th>95% CI (bootstrap)</th></tr>" + "".join(rows) + "</table>"


def _operating_points_table(points: Sequence[dict]) -> str:
    header = "<tr><th>operating point</th><th>threshold</th><th>sensitivity</th><th>specificity</th>" \
             "<th>precision</th><th>NPV</th><th>F1</th><th>TP / FP / TN / FN</th></tr>"
    rows = []
    for p in points:
        if not p.get("available", True):
            rows.append(f"<tr><td>{html.escape(p['name'])}</td><td colspan=7>not available</td></tr>")
            continue
        c = p["confusion"]
        rows.append(f"<tr><td>{html.escape(p['name'])}</td><td>{p['threshold']:.4f}</td><td>{p['recall']:.3f}</td>"
                    f"<td>{p['specificity']:.3f}</td><td>{p['precision']:.3f}</td><td>{p['npv']:.3f}</td>"
                    f"<td>{p['f1']:.3f}</td><td>{c['tp']} / {c['fp']} / {c['tn']} / {c['fn']}</td></tr>")
    return "<table>" + header + "".join(rows) + "</table>"


def _gallery(gallery: dict[str, Sequence[tuple[str, bytes]]]) -> str:
    parts = []
    for category, items in gallery.items():
        parts.append(f"<h3>{html.escape(category)}</h3>")
        if not items:
            parts.append("<p>none</p>")
            continue
        figures = "".join(f'<figure><img alt="{html.escape(caption)}" src="{png_data_uri(png)}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>" for caption, png in items)
        parts.append(f'<div class="gallery">{figures}</div>')
    return "".join(parts)


def _ci(ci) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else ""


def _subgroup_section(table: dict | None) -> str:
    if not table:
        return ""
    columns = ("prevalence", "auroc", "sensitivity", "specificity", "fnr", "ece")
    header = "<tr><th>subgroup</th><th>n</th><th>pneumonia</th>" + "".join(
        f"<th>{c}</th>" for c in columns) + "<th>sensitivity - whole split</th></tr>"
    rows = []
    overall = table["overall"]
    rows.append("<tr><td><b>whole split</b></td>" + f"<td>{overall['n']}</td><td>{overall['n_positive']}</td>" +
                "".join(f"<td>{_fmt(overall[c])}</td>" for c in columns) + "<td></td></tr>")
    for g in table["groups"]:
        flag = " &#9888; small" if g["small"] else ""
        diff, diff_ci = g["difference"]["sensitivity"], g["difference_ci95"]["sensitivity"]
        rows.append(f"<tr><td>{html.escape(g['name'])}{flag}</td><td>{g['n']}</td><td>{g['n_positive']}</td>" +
                    "".join(f"<td>{_fmt(g[c])} <small>{_ci(g['ci95'][c])}</small></td>" for c in columns) +
                    f"<td>{'n/a' if diff is None else f'{diff:+.3f}'} <small>{_ci(diff_ci)}</small></td></tr>")
    unknown = ", ".join(f"{a}: {n}" for a, n in table["n_unknown"].items() if n)
    return (f"<h2>Subgroups</h2><p>Threshold {table['threshold']:.3g}; 95% CIs by {html.escape(table['ci_method'])} "
            f"({table['bootstrap_resamples']} resamples). Groups under {table['min_size']} images are marked "
            f"small: their numbers are shown but say little. fnr = 1 - sensitivity (underdiagnosis)."
            f"{' Unknown values, left out of the groups: ' + html.escape(unknown) + '.' if unknown else ''}</p>"
            f"<table>{header}{''.join(rows)}</table>")


def _shortcut_section(shortcut: dict | None) -> str:
    if not shortcut:
        return ""
    header_only = shortcut["header_only"]
    if header_only.get("available"):
        baseline = (f"<p>A logistic regression on the header alone ({', '.join(header_only['fields_known_in_train'])}),"
                    f" fitted on the {header_only['n_train']} training images, reaches AUROC "
                    f"<b>{header_only['auroc']:.3f}</b> {_ci(header_only['auroc_ci95'])} on these images; the model "
                    f"reaches {_fmt(shortcut['model_auroc'])}, {header_only['model_minus_header_auroc']:+.3f} "
                    f"{_ci(header_only['model_minus_header_ci95'])} above it (paired bootstrap). The closer the two, "
                    "the more of the model's ranking the header alone explains.</p>")
    else:
        baseline = f"<p>Header-only baseline not available: {html.escape(header_only['reason'])}.</p>"
    views = "".join(f"<tr><td>{html.escape(v)}</td><td>{r['n']}</td><td>{r['n_positive']}</td>"
                    f"<td>{_fmt(r['auroc'])} <small>{_ci(r['auroc_ci95'])}</small></td></tr>"
                    for v, r in shortcut["within_view"].items())
    table = (f"<table><tr><th>view</th><th>n</th><th>pneumonia</th><th>model AUROC within the view</th></tr>{views}"
             "</table><p>A model that had learned only the view would score about 0.5 inside each view.</p>"
             if views else "")
    return f"<h2>Shortcut check</h2>{baseline}{table}"


def _calibration_section(calibration: dict | None, metrics: dict) -> str:
    if not calibration:
        return ""
    raw = calibration["raw"]
    if not calibration["calibrated"]:
        return (f"<h2>Calibration</h2><p>This checkpoint is not calibrated: ECE {raw['ece']:.3f}, Brier "
                f"{raw['brier']:.3f}. <code>pneumocam calibrate</code> fits a temperature and a threshold on a "
                "calibration split.</p>")
    after, params = calibration["calibrated_scores"], calibration["parameters"]
    rule = html.escape(str(metrics.get("threshold_rule") or ""))
    return (f"<h2>Calibration</h2><p>Calibrated checkpoint: temperature {params['temperature']:.3f}, intercept "
            f"{params['intercept']:+.3f}, prevalence shift {params['prevalence_shift']:+.3f}. On these images: ECE "
            f"{raw['ece']:.3f} &rarr; <b>{after['ece']:.3f}</b>, Brier {raw['brier']:.3f} &rarr; "
            f"<b>{after['brier']:.3f}</b> (raw &rarr; calibrated). Threshold {metrics['threshold']:.4f}: {rule}.</p>")


def _end_points(faithfulness: dict | None) -> str:
    """Where every deletion curve starts and ends, whatever the map, and what that means for the areas."""
    if not faithfulness or faithfulness.get("all_replaced_probability") is None:
        return ""
    start, end = faithfulness["original_probability"], faithfulness["all_replaced_probability"]
    meaning = ("the replacement itself reads as pneumonia, so every deletion curve drifts up towards it and the "
               "areas separate the maps less than they seem; compare each map with the random map"
               if end > start else "removing everything removes the evidence, as deletion assumes")
    return (f"<p>Probability: {html.escape(faithfulness.get('probability', 'the sigmoid of the logit'))}. The images "
            f"as they are: mean p = {start:.3f}; every pixel replaced "
            f"({html.escape(faithfulness['replacement_value'])}): mean p = {end:.3f}: {meaning}.</p>")


def _trust_section(maps: dict | None, misses: Sequence[tuple[str, bytes]]) -> str:
    if not maps:
        return ""
    named = [*maps["methods"].items(), ("random map", maps["baseline_random"]),
             ("centre prior", maps["baseline_centre"])]
    if maps.get("baseline_box_prior"):
        named.append(("box prior", maps["baseline_box_prior"]))
    faithful = (maps.get("faithfulness") or {}).get("maps", {})
    keys = {"random map": "random", "centre prior": "centre", "box prior": "box_prior"}
    rows = []
    for name, s in named:
        ci = s["ci95"]
        margin = (s.get("margin_over_box_prior") or {}).get("pointing_game")
        f = faithful.get(keys.get(name, name), {})
        margin_text = f"{margin['mean']:+.2f} <small>{_ci(margin['ci95'])}</small>" if margin else ""
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{s['pointing_game']:.2f} <small>{_ci(ci['pointing_game'])}</small>"
            f"</td><td>{margin_text}</td>"
            f"<td>{s['iou']['0.5']:.2f} <small>{_ci(ci['iou@0.5'])}</small></td>"
            f"<td>{s['pixel_auprc']:.2f} <small>{_ci(ci['pixel_auprc'])}</small></td>"
            f"<td>{s['chexlocalize_iou']:.2f}</td><td>{s['energy_in_boxes']:.2f}</td>"
            f"<td>{_fmt(f.get('deletion', {}).get('probability'))}</td>"
            f"<td>{_fmt(f.get('insertion', {}).get('probability'))}</td></tr>")
    table = ("<table><tr><th>map</th><th>pointing game</th><th>minus box prior</th><th>IoU@0.5</th>"
             "<th>pixel AUPRC</th><th>CheXlocalize IoU</th><th>energy in boxes</th><th>deletion area</th>"
             "<th>insertion area</th></tr>" + "".join(rows) + "</table>")
    check = maps.get("randomization_check") or {}
    randomised = "".join(f"<tr><td>{html.escape(m)}</td><td>{r['mean_rank_correlation']:.3f}</td>"
                         f"<td>{'passed' if r['passed'] else 'FAILED'}</td></tr>" for m, r in check.items())
    figures = "".join(f'<figure><img alt="{html.escape(c)}" src="{png_data_uri(p)}"><figcaption>{html.escape(c)}'
                      "</figcaption></figure>" for c, p in misses)
    ends = _end_points(maps.get("faithfulness"))
    return (f"<h2>Can you trust these maps?</h2><p>{maps['n_images']} images with boxes ({html.escape(maps['split'])}"
            " split). Localisation with patient-level 95% CIs; the box prior is the mean training-box mask (one "
            "fixed guess of where boxes are), so a map must beat it to show it looks at the image. Deletion and "
            f"insertion: areas under the pneumonia probability as pixels are removed or revealed, most salient "
            f"first ({html.escape(maps['faithfulness']['replacement_value']) if maps.get('faithfulness') else ''}); "
            "deletion lower and insertion higher is more faithful.</p>" + ends + table +
            (f"<h3>Randomisation check</h3><p>Spearman correlation of each map with the map of the same network "
             f"with layer4 and fc re-initialised; a faithful method's maps change (below 0.5).</p><table><tr><th>"
             f"method</th><th>rank correlation</th><th>check</th></tr>{randomised}</table>" if randomised else "") +
            (f"<h3>The worst misses</h3><p>CAM peaks farthest from every box.</p><div class=\"gallery\">{figures}"
             "</div>" if figures else ""))


def build_report(metrics: dict, plots: dict[str, bytes], gallery: dict[str, Sequence[tuple[str, bytes]]],
                 provenance: dict, misses: Sequence[tuple[str, bytes]] = ()) -> str:
    """metrics: metrics.json content; plots: title -> PNG bytes; gallery: category -> [(caption, PNG)]."""
    warnings = "".join(f'<div class="warn">{html.escape(w)}</div>' for w in metrics.get("warnings", []))
    c = metrics["confusion"]
    summary = (f"{metrics['n']} images, {metrics['n_positive']} with pneumonia; threshold {metrics['threshold']:.3f}: "
               f"TP {c['tp']}, FP {c['fp']}, TN {c['tn']}, FN {c['fn']}")
    images = "".join(f'<img alt="{html.escape(t)}" title="{html.escape(t)}" src="{png_data_uri(p)}">'
                     for t, p in plots.items())
    header_rows = "".join(f"<tr><td>{html.escape(k)}</td><td style='text-align:left'>{_fmt(v)}</td></tr>"
                          for k, v in provenance.items() if not isinstance(v, dict))
    details = html.escape(json.dumps({k: v for k, v in provenance.items() if isinstance(v, dict)}, indent=2))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>pneumocam evaluation report</title>
<style>{STYLE}</style></head><body>
<h1>pneumocam evaluation report</h1>
<p>{html.escape(summary)}</p>
{warnings}
<table>{header_rows}</table>
<details><summary>model config, normalisation and package versions</summary><pre>{details}</pre></details>
<h2>Metrics</h2>{_metrics_table(metrics)}
<h2>Operating points</h2>{_operating_points_table(metrics.get("operating_points", []))}
{_calibration_section(metrics.get("calibration"), metrics)}
{_subgroup_section(metrics.get("subgroups"))}
{_shortcut_section(metrics.get("shortcut"))}
{_trust_section(metrics.get("maps"), misses)}
<h2>Plots</h2><div class="plots">{images}</div>
<h2>CAM gallery</h2>
<p>The most confident cases of each kind, with the Class Activation Map of the pneumonia logit.</p>
{_gallery(gallery)}
</body></html>
"""
