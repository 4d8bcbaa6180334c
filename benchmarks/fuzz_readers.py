"""The readers' mutation fuzz (tests/test_readers.py) with many more examples than CI runs.

Flips, truncates and splices bytes of a real DICOM, PNG and JPEG (Hypothesis); every mutant must be read into
[0, 1] or rejected with pneumocam's ImageReadError, never with another exception.

usage: python benchmarks/fuzz_readers.py [--examples 2000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2000, help="mutants per file type (CI runs 40)")
    args = parser.parse_args()
    env = {**os.environ, "PNEUMOCAM_FUZZ_EXAMPLES": str(args.examples)}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
               str(ROOT / "tests" / "test_readers.py"), "-k", "mutated"]
    sys.exit(subprocess.run(command, env=env, cwd=ROOT).returncode)


if __name__ == "__main__":
    main()
