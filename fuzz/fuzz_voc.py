#!/usr/bin/env python3
"""Fuzz the VOC reader: any bytes -> parse_annotation, only AnnotationError may come out.

    python3 fuzz/fuzz_voc.py fuzz/corpus-work/voc fuzz/corpus/voc -max_total_time=600

See fuzz/README.md; inputs that crash are replayed by tests/test_fuzz_regressions.py.
"""

import sys
from pathlib import Path

import atheris

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

with atheris.instrument_imports(include=["toonvision", "targets"]):
    from targets import check_voc


def main() -> None:
    atheris.Setup(sys.argv, check_voc)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
