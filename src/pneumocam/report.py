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


def build_report(metrics: dict, plots: dict[str, bytes], gallery: dict[str, Sequence[tuple[str, bytes]]],
                 provenance: dict) -> str:
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
<h2>Plots</h2><div class="plots">{images}</div>
<h2>CAM gallery</h2>
<p>The most confident cases of each kind, with the Class Activation Map of the pneumonia logit.</p>
{_gallery(gallery)}
</body></html>
"""
