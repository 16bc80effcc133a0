#!/usr/bin/env python3
"""Fuzz label normalisation: hostile labels are refused (ValueError) or become safe ASCII file names.

    python3 fuzz/fuzz_label.py fuzz/corpus-work/label fuzz/corpus/label -max_total_time=600

See fuzz/README.md; inputs that crash are replayed by tests/test_fuzz_regressions.py.
"""

import sys
from pathlib import Path

import atheris

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

with atheris.instrument_imports(include=["toonvision", "targets"]):
    from targets import check_label


def main() -> None:
    atheris.Setup(sys.argv, check_label)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
