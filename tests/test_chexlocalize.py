import json
import pickle

import numpy as np

from pneumocam.explain import TASK, export_chexlocalize, image_id


def test_maps_and_boxes_are_written_in_chexlocalize_input_format(tmp_path):
    files = ["Processed/val/1/patient a.npy", "Processed/val/1/b.npy"]
    images = [np.full((8, 6), 0.5, np.float32), np.zeros((8, 6), np.float32)]
    maps = {"cam": np.random.default_rng(0).random((2, 8, 6)).astype(np.float32)}
    export_chexlocalize(tmp_path, files, images, maps, [[(1, 2, 3, 4)], [(0, 0, 2, 2), (4, 4, 2, 2)]],
                        np.array([0.9, 0.2]))
    annotations = json.loads((tmp_path / "gt_annotations.json").read_text())
    first = image_id(files[0])
    assert "/" not in first and " " not in first
    assert annotations[first] == {"img_size": [8, 6], TASK: [[[1, 2], [4, 2], [4, 6], [1, 6]]]}
    assert len(annotations[image_id(files[1])][TASK]) == 2
    with open(tmp_path / "cam" / "maps" / f"{first}_{TASK}_map.pkl", "rb") as f:
        record = pickle.load(f)
    assert tuple(record["map"].shape) == (1, 1, 8, 6) and np.allclose(record["map"][0, 0].numpy(), maps["cam"][0])
    assert record["prob"] == 0.9 and record["gt"] == 1 and record["task"] == TASK
    assert tuple(record["cxr_img"].shape) == (3, 8, 6) and record["cxr_dims"] == (6, 8)
