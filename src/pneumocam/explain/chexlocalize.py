"""pneumocam's maps and boxes in CheXlocalize's input format (Saporta et al. 2022,
github.com/rajpurkarlab/cheXlocalize), so that project's own scripts can score them:

  OUT/maps/<id>_Airspace Opacity_map.pkl   one pickle per image: {"map": (1, 1, H, W) tensor, "prob": float,
                                           "task": str, "gt": 1, "cxr_img": (3, H, W) tensor, "cxr_dims": (W, H)}
                                           (per method: OUT/<method>/maps/...)
  OUT/gt_annotations.json                  {<id>: {"img_size": [H, W], "Airspace Opacity": [box polygons]}}

Then, in a CheXlocalize checkout:
  python annotation_to_segmentation.py --ann_path OUT/gt_annotations.json --output_path gt.json
  python heatmap_to_segmentation.py --map_dir OUT/cam/maps --output_path pred.json
  python eval.py --metric iou --gt_path gt.json --pred_path pred.json
  python eval.py --metric hitmiss --gt_path gt.json --pred_path OUT/cam/maps

RSNA's boxes mark lung opacities; of CheXlocalize's ten tasks the one that means that is "Airspace Opacity",
so that is the task name used. Everything is in the model-input space the maps live in (224x224 by default).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch

from pneumocam.files import atomic_open, write_json

TASK = "Airspace Opacity"


def image_id(file: str) -> str:
    """A prepared file's path -> an id CheXlocalize can split its file names on (no '/', no spaces)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(file).with_suffix("").as_posix())


def box_polygon(box: tuple[float, float, float, float]) -> list[list[float]]:
    x, y, w, h = box
    return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]


def export_chexlocalize(out_dir: Path, files: list[str], images: list[np.ndarray], maps: dict[str, np.ndarray],
                        boxes: list[list], probabilities: np.ndarray) -> Path:
    out_dir = Path(out_dir)
    annotations = {}
    for index, file in enumerate(files):
        height, width = images[index].shape
        annotations[image_id(file)] = {"img_size": [height, width],
                                       TASK: [box_polygon(b) for b in boxes[index]]}
    write_json(out_dir / "gt_annotations.json", annotations)
    for method, stack in maps.items():
        for index, file in enumerate(files):
            image = torch.from_numpy(np.asarray(images[index], dtype=np.float32))
            record = {"map": torch.from_numpy(np.asarray(stack[index], dtype=np.float32))[None, None],
                      "prob": float(probabilities[index]), "task": TASK, "gt": 1,
                      "cxr_img": image[None].repeat(3, 1, 1), "cxr_dims": (image.shape[1], image.shape[0])}
            with atomic_open(out_dir / method / "maps" / f"{image_id(file)}_{TASK}_map.pkl", "wb") as f:
                pickle.dump(record, f)
    return out_dir
