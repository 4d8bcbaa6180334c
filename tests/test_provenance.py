"""What a checkpoint and an answer may say about where a model came from."""

from pneumocam.provenance import without_machine_paths


def test_machine_paths_are_shortened_to_the_names_a_reader_needs():
    meta = {"config": {"pretrained": "/home/alice/runs/adult/checkpoints/best.ckpt", "lr": 5e-4, "augment": "shift"},
            "data_dir": "/home/alice/data/rsna", "windows": "C:\\Users\\alice\\data\\joint",
            "command": "pneumocam train /srv/x/joint /srv/x/runs/j --pretrained pneumocam-cxr --lr 5e-4",
            "url": "http://pacs.example.org/dicom-web", "views": ("AP", "PA"), "ratio": "1/2"}
    clean = without_machine_paths(meta)
    assert clean["config"] == {"pretrained": ".../adult/checkpoints/best.ckpt", "lr": 5e-4, "augment": "shift"}
    assert clean["data_dir"] == ".../rsna" and clean["windows"] == ".../joint"
    assert clean["command"] == "pneumocam train .../joint .../j --pretrained pneumocam-cxr --lr 5e-4"
    assert clean["url"] == meta["url"] and clean["views"] == ("AP", "PA") and clean["ratio"] == "1/2"
    assert "alice" not in repr(clean)


def test_the_bundled_models_carry_no_machine_path():
    import torch

    from pneumocam.model import BUNDLED_MODELS, bundled_file

    for model in BUNDLED_MODELS.values():
        for path in [bundled_file(name) for name in (model.weights, model.calibration) if name]:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            meta = {key: value for key, value in saved.items() if key != "state_dict"}
            assert without_machine_paths(meta) == meta, path
