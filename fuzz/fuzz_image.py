#!/usr/bin/env python3
"""Fuzz the image opener: any bytes -> decode_image (tiny pixel limit), only ImageError may come out.

    python3 fuzz/fuzz_image.py fuzz/corpus-work/image fuzz/corpus/image -max_total_time=600

See fuzz/README.md; inputs that crash are replayed by tests/test_fuzz_regressions.py.
"""

import sys
import warnings
from pathlib import Path

import atheris

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

with atheris.instrument_imports(include=["toonvision", "targets", "PIL"]):
    from PIL import Image

    Image.init()  # import every format plugin now, so that it is instrumented too
    from targets import check_image


def main() -> None:
    warnings.simplefilter("ignore")  # Pillow warns on every corrupt EXIF; decode_image still errors on bombs
    atheris.Setup(sys.argv, check_image)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
