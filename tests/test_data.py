import json

import numpy as np
import pytest

from pneumocam.data import RSNA_MEAN, RSNA_STD, load_file, read_normalization
from pneumocam.errors import PneumocamError


def test_normalization_uses_stats_json_when_present_else_the_rsna_constants(tmp_path):
    bare = read_normalization(tmp_path)  # a hand-made folder without stats.json
    assert (bare.mean, bare.std, bare.origin) == (RSNA_MEAN, RSNA_STD, "rsna-constants")
    with pytest.raises(PneumocamError, match="stats.json"):
        read_normalization(tmp_path, use_data_stats=True)
    (tmp_path / "stats.json").write_text(json.dumps({"mean": 0.4, "std": 0.2}))
    own = read_normalization(tmp_path)
    assert (own.mean, own.std) == (0.4, 0.2) and own.origin.endswith("stats.json")
    assert read_normalization(tmp_path, use_data_stats=True) == own
    assert read_normalization(tmp_path, use_data_stats=False).mean == RSNA_MEAN


def test_load_file_returns_the_saved_array(tmp_path):
    array = np.random.default_rng(0).random((224, 224), dtype=np.float32)
    np.save(tmp_path / "x.npy", array)
    assert np.array_equal(load_file(tmp_path / "x.npy"), array)
