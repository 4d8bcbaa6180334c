import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_is_a_short_user_guide():
    assert len((ROOT / "README.md").read_bytes()) <= 10_000


@pytest.mark.skipif(shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists(),
                    reason="mkdocs is not installed (pip install -e '.[dev]')")
@pytest.mark.slow
def test_the_documentation_builds_with_no_broken_link_or_reference(tmp_path):
    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run([str(mkdocs) if mkdocs.exists() else "mkdocs", "build", "--strict", "--site-dir",
                             str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={"NO_MKDOCS_2_WARNING": "1", "PATH": str(mkdocs.parent) + ":/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr[-3000:]
    api = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert "TrainConfig" in api  # the API reference is rendered from the docstrings
