"""How often the out-of-range detector flags real chest X-rays (false flags) and inputs that are not frontal
chest X-rays (hits), for a calibrated checkpoint (default: the bundled pneumocam-cxr).

Should pass (false-flag rate): the validation split of each prepared folder given with --data, the RSNA
DICOMs and the NIH / SIIM chest X-rays in ../shared/data. Should be flagged (hit rate): the same validation
images inverted (1 - x) and rotated by 90 degrees, matplotlib's sample pictures (a photograph, a product
photo, a logo, an MRI slice, an elevation map), scikit-image's sample pictures when it is installed, and
uniform and noise images. Reported apart, without a verdict: the Kermany originals (kermany_sample), which
keep their aspect ratio where the training set (kermany224) was squashed to 224x224.

usage: python benchmarks/out_of_range.py --data real/rsna real/joint [--checkpoint pneumocam-cxr] [--json out.json]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

import numpy as np

from pneumocam.data import load_file, split_dataset, to_model_input
from pneumocam.deploy import Predictor

ROOT = Path(__file__).resolve().parents[1]


def flagged(predictor: Predictor, images: list[np.ndarray]) -> list[bool]:
    return [p.ood for p in predictor.predict_arrays(images, cam=False)]


def gray(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=-1)
    image = image - image.min()
    return to_model_input(image / max(float(image.max()), 1e-6))


def matplotlib_samples() -> dict[str, np.ndarray]:
    import matplotlib
    from PIL import Image

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    out = {name: gray(np.asarray(Image.open(folder / name))) for name in
           ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")}
    with gzip.open(folder / "s1045.ima.gz") as f:  # a 256x256 16-bit MRI slice
        out["s1045.ima (MRI)"] = gray(np.frombuffer(f.read(), "<u2").reshape(256, 256))
    for name in ("jacksboro_fault_dem.npz", "topobathy.npz"):
        with np.load(folder / name) as data:
            out[name] = gray(data[data.files[0]])
    return out


def skimage_samples() -> dict[str, np.ndarray]:
    try:
        from skimage import data
    except ImportError:
        return {}
    names = ("astronaut", "camera", "coffee", "chelsea", "rocket", "brick", "grass", "moon", "page", "text",
             "clock", "coins", "immunohistochemistry", "retina", "hubble_deep_field")
    return {f"skimage {n}": gray(getattr(data, n)()) for n in names}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="pneumocam-cxr")
    parser.add_argument("--data", nargs="*", default=[], type=Path, help="prepared folders (their val splits)")
    parser.add_argument("--shared", type=Path,
                        default=Path(os.environ.get("PNEUMOCAM_SHARED_DATA", ROOT.parent / "shared" / "data")))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    predictor = Predictor.from_checkpoint(args.checkpoint)
    if predictor.out_of_range is None:
        raise SystemExit(f"{args.checkpoint} has no out-of-range detector: run pneumocam calibrate first")
    rows = []

    def record(name: str, expect: str, flags: list[bool]) -> None:
        rows.append({"set": name, "expect": expect, "n": len(flags), "flagged": int(sum(flags)),
                     "rate": float(np.mean(flags)) if flags else None})
        print(f"{name:<52} {expect:<9} n={len(flags):<5} flagged {sum(flags):>5} ({np.mean(flags):.3f})", flush=True)

    for data_dir in args.data:
        val = [load_file(p) for p, _ in split_dataset(data_dir, "val").samples]
        record(f"{data_dir.name} val", "pass", flagged(predictor, val))
        record(f"{data_dir.name} val, inverted", "flag", flagged(predictor, [1 - v for v in val]))
        rotated = [np.rot90(v).copy() for v in val]
        record(f"{data_dir.name} val, rotated 90 degrees", "flag", flagged(predictor, rotated))
    real_sets = {"RSNA DICOMs (rsna_sample)": ("pass", "rsna_sample/stage_2_train_images/*.dcm"),
                 "NIH PNG + SIIM DICOM (other_formats)": ("pass", "other_formats/*[0-9].[pd][nc][gm]"),
                 "Kermany originals, aspect kept (kermany_sample)": ("report", "kermany_sample/**/*.jpeg")}
    for name, (expect, pattern) in real_sets.items():
        paths = sorted(args.shared.glob(pattern))
        if paths:
            predictions, _ = predictor.predict_files(paths, cam=False)
            record(name, expect, [p.ood for p in predictions])
    pictures = {**matplotlib_samples(), **skimage_samples()}
    record("sample pictures (matplotlib" + (", scikit-image)" if len(pictures) > 6 else ")"), "flag",
           flagged(predictor, list(pictures.values())))
    rng = np.random.default_rng(0)
    synthetic = [np.full((224, 224), v, np.float32) for v in (0.0, 0.5, 1.0)] + \
        [rng.random((224, 224), dtype=np.float32) for _ in range(5)]
    record("uniform and noise images", "flag", flagged(predictor, synthetic))
    per_picture = dict(zip(pictures, flagged(predictor, list(pictures.values())), strict=True))
    result = {"checkpoint": args.checkpoint, "threshold": predictor.out_of_range.threshold,
              "quantile": predictor.out_of_range.quantile, "sets": rows, "pictures": per_picture}
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
