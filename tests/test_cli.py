import json
import subprocess
import sys
from pathlib import Path

import pytest

from pneumocam.cli import main
from pneumocam.cli.parser import build_parser

COMMANDS = ["synth", "prepare", "train", "evaluate", "calibrate", "cam", "localize", "predict", "serve", "pacs",
            "export", "quantize", "models", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help_with_examples(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"pneumocam {command}" in out


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("pneumocam")  # installed beside the interpreter running the tests
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and all(c in result.stdout for c in COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize(
    "argv",
    [
        ["prepare", "{tmp}/missing", "{tmp}/out"],
        ["evaluate", "{tmp}/missing.ckpt", "{tmp}", "{tmp}/out"],
        ["cam", "{tmp}/missing.ckpt", "{tmp}/missing.png", "--out", "{tmp}/cams"],
        ["train", "{tmp}/missing", "{tmp}/run", "--pretrained", "none"],
    ],
)
def test_bad_input_gives_one_line_error_and_nonzero_exit(argv, tmp_path):
    args = [a.format(tmp=tmp_path) for a in argv]
    result = subprocess.run([sys.executable, "-m", "pneumocam.cli", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "missing" in error_lines[0]


def test_cam_on_unreadable_image_exits_partial(tiny_checkpoint, phantom_data, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    good = next((phantom_data / "Processed").rglob("*.npy"))
    code = main(["cam", str(tiny_checkpoint), str(good), str(bad), "--out", str(tmp_path / "cams")])
    assert code == 3
    rows = (tmp_path / "cams" / "failed.csv").read_text().splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith(str(bad)) and "not a readable image" in rows[0]


def test_parser_defaults_follow_the_spec():
    args = build_parser().parse_args(["evaluate", "c.ckpt", "data", "out"])
    # the checkpoint's threshold (0.5, or calibrate's); test when the data has one, else val; every known subgroup
    assert args.threshold is None and args.split == "auto" and args.by is None


def test_subgroup_flag_reads_names_auto_and_none():
    parse = build_parser().parse_args
    assert parse(["evaluate", "c", "d", "o", "--by", "none"]).by == ()
    assert parse(["evaluate", "c", "d", "o", "--by", "auto"]).by is None
    assert parse(["evaluate", "c", "d", "o", "--by", "sex, view"]).by == ("sex", "view")
    with pytest.raises(SystemExit):
        parse(["evaluate", "c", "d", "o", "--by", "sex,race"])


def test_main_leaves_the_environment_alone(tiny_checkpoint, phantom_data, tmp_path, monkeypatch):
    # child processes (a notebook kernel, say) must not inherit a plotting backend from a CLI call
    import os

    monkeypatch.delenv("MPLBACKEND", raising=False)
    before = dict(os.environ)
    npy = sorted((phantom_data / "Processed").rglob("*.npy"))[0]
    assert main(["cam", str(tiny_checkpoint), str(npy), "--out", str(tmp_path / "cams")]) == 0
    assert dict(os.environ) == before


def test_config_choices_are_the_libraries_names():
    from pneumocam.cli.parser import BUNDLED_NAMES
    from pneumocam.config import CAM_METHODS, MONITORS, OPTIMIZERS
    from pneumocam.deploy import METHODS
    from pneumocam.explain import LIBRARY_METHODS
    from pneumocam.model import BUNDLED_MODELS
    from pneumocam.training import MONITOR_MODES, OPTIMIZER_CLASSES

    # gradcam-lib is pytorch-grad-cam's Grad-CAM, kept for comparing with the built-in one in the tests
    assert set(CAM_METHODS) == set(METHODS) | (set(LIBRARY_METHODS) - {"gradcam-lib", "gradcam++-lib"})
    assert BUNDLED_NAMES == tuple(BUNDLED_MODELS)
    assert set(MONITORS) == set(MONITOR_MODES) and set(OPTIMIZERS) == set(OPTIMIZER_CLASSES)


def test_models_lists_the_bundled_model_with_its_card(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "pneumocam-cxr" in out and "Kermany val AUROC" in out.replace("kermany", "Kermany")
    assert main(["models", "pneumocam-cxr"]) == 0
    card = capsys.readouterr().out
    for heading in ("Training data", "Recipe", "Validation", "Intended use", "Known limits"):
        assert heading in card
    assert main(["models", "--json"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described[0]["name"] == "pneumocam-cxr" and set(described[0]["validation"]) == {"kermany", "rsna"}
    assert set(described[0]["thresholds_by_view"]) == set(described[0]["calibration_by_view"]) == {"AP", "PA"}


@pytest.mark.slow
def test_localize_says_whether_the_model_was_box_guided(tiny_checkpoint, phantom_data, tmp_path, capsys):
    assert main(["localize", str(tiny_checkpoint), str(phantom_data), str(tmp_path), "--methods", "cam"]) == 0
    out = capsys.readouterr().out
    assert "3 images with boxes (val split); labels-only model" in out
    assert json.loads((tmp_path / "localization.json").read_text())["box_loss_weight"] == 0.0


def test_version_comes_from_the_package_metadata():
    from importlib import metadata

    result = subprocess.run([sys.executable, "-m", "pneumocam.cli", "--version"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == f"pneumocam {metadata.version('pneumocam')}"


@pytest.mark.slow
def test_train_writes_the_settings_it_ran_with_and_they_read_back(phantom_data, tmp_path):
    from pneumocam.cli import parse_args

    run = tmp_path / "run"
    assert main(["train", str(phantom_data), str(run), "--pretrained", "none", "--fast-dev-run", "--batch-size", "4",
                 "--lr", "3e-4", "--augment", "none"]) == 0
    _, config = parse_args(["train", "d", "r", "--config", str(run / "config.yaml")])
    assert (config.lr, config.batch_size, config.augment, config.fast_dev_run) == (3e-4, 4, "none", True)
    assert config.precision == "auto"  # the settings as given; the checkpoint records what "auto" became


def test_pneumocam_alone_lists_the_commands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in COMMANDS)


@pytest.mark.parametrize(("argv", "hint"), [
    (["train", "data/", "run/", "--learning-rate", "1e-3"], "did you mean --lr?"),
    (["train", "data/", "run/", "--epoch", "3"], "did you mean --epochs?"),  # abbreviations are not accepted
    (["predict", "pneumocam-cxr", "x.dcm", "--formt", "json"], "did you mean --format?"),
    (["serve", "pneumocam-cxr", "--max-upload", "10"], "did you mean --max-upload-mb?"),
])
def test_an_unknown_flag_gets_the_commands_usage_and_the_closest_flag(argv, hint, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"usage: pneumocam {argv[0]}" in err and hint in err


@pytest.mark.parametrize("port", ["80808", "0", "-1", "http"])
def test_ports_are_validated(port, capsys):
    with pytest.raises(SystemExit) as info:
        main(["serve", "pneumocam-cxr", "--port", port])
    assert info.value.code == 2 and "--port" in capsys.readouterr().err


def test_a_port_in_a_settings_file_is_validated_too(tmp_path, capsys):
    (tmp_path / "serve.yaml").write_text("port: 80808\n")
    assert main(["serve", "pneumocam-cxr", "--config", str(tmp_path / "serve.yaml")]) == 1
    assert "out of range" in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "module", "extra"), [
    (["serve", "pneumocam-cxr"], "fastapi", "serve"),
    (["pacs", "pneumocam-cxr", "http://127.0.0.1:8042/dicom-web", "--once"], "dicomweb_client", "pacs"),
    (["export", "pneumocam-cxr", "model.onnx"], "onnx", "export"),
    (["quantize", "pneumocam-cxr", "scans/"], "onnxruntime", "fast"),
])
def test_a_missing_extra_is_one_line_with_an_install_command(argv, module, extra, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without the extra looks like to import
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and f'pip install ".[{extra}]"' in err


def test_a_missing_fast_backend_is_one_line_too(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    image = Path(__file__).resolve().parents[1] / "src" / "pneumocam" / "examples"
    assert main(["predict", "pneumocam-cxr", str(image), "--backend", "onnxruntime"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and 'pip install ".[fast]"' in err


@pytest.mark.parametrize("command", ["predict", "cam"])
def test_a_folder_without_images_is_an_error_saying_what_was_looked_for(command, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    argv = [command, "pneumocam-cxr", str(tmp_path / "empty")] + (["--out", str(tmp_path / "out")]
                                                                   if command == "cam" else [])
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "no images found" in err and "*.dcm" in err and "*.png" in err
