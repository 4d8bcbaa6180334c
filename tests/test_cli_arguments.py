import dataclasses

import pytest

from pneumocam import config as settings
from pneumocam.cli import parse_args
from pneumocam.cli.arguments import flag_of, read_config_file
from pneumocam.cli.parser import COMMANDS, build_parser
from pneumocam.errors import PneumocamError

CONFIGS = [c for c in vars(settings).values() if dataclasses.is_dataclass(c)]
POSITIONALS = {"synth": ["o"], "prepare": ["s", "o"], "train": ["d", "r"], "evaluate": ["c", "d", "o"],
               "calibrate": ["c", "d", "o"], "cam": ["c", "i", "--out", "o"], "localize": ["c", "d", "o"],
               "predict": ["c", "i"], "serve": ["c"], "pacs": ["c", "u"], "export": ["c", "o"], "quantize": ["c", "i"],
               "demo": []}


def test_every_config_belongs_to_a_command():
    assert {c.config for c in COMMANDS if c.config} == set(CONFIGS)


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.config], ids=lambda c: c.name)
def test_the_cli_exposes_every_field_with_the_dataclass_default(command):
    parser = build_parser()
    args = parser.parse_args([command.name, *POSITIONALS[command.name]])
    sub = args.command_parser
    flags = {option: action for action in sub._actions for option in action.option_strings}
    for field in dataclasses.fields(command.config):
        action = flags[flag_of(field)]
        assert action.dest == field.name and action.default == field.default, field.name
        assert getattr(args, field.name) == field.default, field.name
        assert action.help and "default:" in action.help, field.name
    _, config = parse_args([command.name, *POSITIONALS[command.name]])
    assert config == command.config()


def test_a_written_config_reads_back_as_the_same_settings(tmp_path):
    changed = settings.TrainConfig(epochs=3, lr=2e-3, data_stats=False, schedule="none")
    path = settings.write_yaml(tmp_path / "config.yaml", changed, "train")
    assert path.read_text().startswith("# pneumocam train")
    _, config = parse_args(["train", "d", "r", "--config", str(path)])
    assert config == changed


def test_flags_win_over_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 3\nlr: 5e-4\n")
    _, config = parse_args(["train", "d", "r", "--config", str(path), "--epochs", "7"])
    assert config.epochs == 7 and config.lr == 5e-4  # YAML 1.1 reads 5e-4 as a string; it is converted


def test_tuple_settings_read_from_lists_and_commas(tmp_path):
    path = tmp_path / "loc.yaml"
    path.write_text("methods: [cam, gradcam]\n")
    _, config = parse_args(["localize", "c", "d", "o", "--config", str(path)])
    assert config.methods == ("cam", "gradcam")
    path.write_text("modalities: cr,dx\n")
    _, config = parse_args(["pacs", "c", "u", "--config", str(path)])
    assert config.modalities == ("CR", "DX")


@pytest.mark.parametrize("text, message", [
    ("epoch: 3\n", "unknown setting"),
    ("epochs: many\n", "expected int"),
    ("schedule: linear\n", "not one of"),
    ("compile: maybe\n", "expected true or false"),
    ("- 1\n- 2\n", "expected a mapping"),
])
def test_a_bad_config_file_is_named_with_the_problem(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PneumocamError, match=message) as info:
        read_config_file(path, settings.TrainConfig)
    assert str(path) in str(info.value)


def test_a_bad_config_file_exits_with_one_line(tmp_path, capsys):
    from pneumocam.cli import main

    path = tmp_path / "bad.yaml"
    path.write_text("epoch: 3\n")
    assert main(["train", "d", "r", "--config", str(path)]) == 1
    assert "unknown setting(s) epoch" in capsys.readouterr().err


def test_balance_by_and_source_shares_read_as_written():
    _, config = parse_args(["train", "d", "r", "--balance-by", "view,sex", "--source-shares",
                            "kermany224=0.3,rsna_1000=0.7"])
    assert config.balance_by == ("view", "sex") and config.source_shares == "kermany224=0.3,rsna_1000=0.7"
    _, config = parse_args(["pacs", "c", "u", "--modalities", "cr,dx"])
    assert config.modalities == ("CR", "DX")  # DICOM codes, upper case
