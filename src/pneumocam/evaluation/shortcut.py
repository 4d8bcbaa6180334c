"""Has the model learned a shortcut? Two checks from the header fields the manifest already holds.

- A header-only baseline: logistic regression on view, sex and age alone, fitted on the training split
  and scored on the evaluated split. If it comes close to the model's AUROC, the header explains much of
  what the model "sees" (on RSNA, 41% of AP images are pneumonia against 10% of PA images).
- Within-view AUROC: the model's AUROC inside each view. A model that only learned the view would drop to
  about 0.5 there.
"""

from __future__ import annotations

import numpy as np

from pneumocam.evaluation.metrics import Bootstrap, bootstrap_auroc_ci, fast_auroc, paired_auroc_difference

HEADER_FIELDS = ("view", "sex", "age")


def header_matrix(rows: list[dict]) -> np.ndarray:
    """Manifest rows -> an (N, 3) object array of view, sex, age (None where unknown) for the pipeline."""
    def age(value: str):
        return float(value) if str(value).strip() else np.nan

    return np.array([[r.get("view") or "unknown", r.get("sex") or "unknown", age(r.get("age", ""))]
                     for r in rows], dtype=object)


def header_model():
    """One-hot view and sex (unknown is a category of its own), age standardised with the median imputed
    and a missing indicator, then an L2-regularised logistic regression (scikit-learn)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    columns = ColumnTransformer([
        ("categorical", OneHotEncoder(handle_unknown="ignore"), [0, 1]),
        ("age", make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                              StandardScaler()), [2]),
    ])
    return make_pipeline(columns, LogisticRegression(max_iter=1000))


def header_baseline(train_rows: list[dict], eval_rows: list[dict], model_probs: np.ndarray,
                    bootstrap: Bootstrap = Bootstrap(), groups: np.ndarray | None = None) -> dict:
    """The header-only baseline's AUROC on the evaluated rows (with a CI) beside the model's, and the paired
    difference model - baseline. Unavailable (with the reason) when the headers hold nothing to learn from."""
    known = [f for f in HEADER_FIELDS if any(str(r.get(f, "")).strip() for r in train_rows)]
    y_train = np.array([int(r["label"]) for r in train_rows])
    y_eval = np.array([int(r["label"]) for r in eval_rows])
    if not known:
        return {"available": False, "reason": "the training split has no view, sex or age"}
    if len(set(y_train)) < 2 or len(set(y_eval)) < 2:
        return {"available": False, "reason": "the training or evaluated split has one class only"}
    model = header_model().fit(header_matrix(train_rows), y_train)
    probs = model.predict_proba(header_matrix(eval_rows))[:, 1]
    difference = paired_auroc_difference(np.asarray(model_probs), probs, y_eval, bootstrap, groups) \
        if bootstrap.n_resamples else {"auroc_difference": fast_auroc(model_probs, y_eval) - fast_auroc(probs, y_eval),
                                       "ci95": None}
    return {"available": True, "fields_known_in_train": known, "n_train": len(train_rows), "n": len(eval_rows),
            "auroc": fast_auroc(probs, y_eval), "auroc_ci95": bootstrap_auroc_ci(probs, y_eval, groups, bootstrap),
            "model_minus_header_auroc": difference["auroc_difference"],
            "model_minus_header_ci95": difference["ci95"], "probabilities": probs}


def within_view_auroc(probs: np.ndarray, labels: np.ndarray, views: list[str],
                      bootstrap: Bootstrap = Bootstrap(), groups: np.ndarray | None = None) -> dict[str, dict]:
    """The model's AUROC inside each known view (with a CI); None for a view with one class."""
    probs, labels, views = np.asarray(probs), np.asarray(labels), np.asarray(views)
    out = {}
    for view in sorted(set(views.tolist()) - {""}):
        inside = views == view
        y, p = labels[inside], probs[inside]
        auroc = fast_auroc(p, y)
        ci = bootstrap_auroc_ci(p, y, None if groups is None else groups[inside], bootstrap) if auroc else None
        out[view] = {"n": int(inside.sum()), "n_positive": int(y.sum()), "prevalence": float(y.mean()),
                     "auroc": auroc, "auroc_ci95": ci}
    return out
