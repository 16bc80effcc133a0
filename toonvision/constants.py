"""Defaults and limits, in one place."""

from __future__ import annotations

import re

# Files
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
XML_SUFFIX = ".xml"
MAX_XML_BYTES = 5 * 1024 * 1024
MAX_IMAGE_PIXELS = 50_000_000  # well above any screenshot, far below a decompression bomb
MAX_IMAGE_BYTES = 8 * MAX_IMAGE_PIXELS  # 16-bit RGBA, uncompressed, at the pixel limit
PNG_COMPRESS_LEVEL = 1  # crops are small; level 1 is lossless and several times faster than 6

# Labels
LABEL_PATTERN = re.compile(r"^[a-z0-9_-]+$")
MAX_LABEL_LENGTH = 100
TOONVISION_GROUPS = ("cog", "toon")
SUITS = {"bb": "Bossbot", "lb": "Lawbot", "cb": "Cashbot", "sb": "Sellbot"}

# Extraction
PARALLEL_MIN_SCREENSHOTS = 8  # below this a process pool costs more than it saves
MANIFEST_COMMIT_EVERY = 500  # crops per manifest commit during extraction

# Splitting and training
DEFAULT_RATIOS = (0.6, 0.2, 0.2)
DEFAULT_IMAGE_SIZE = (600, 200)  # height, width: entities are tall
DEFAULT_BATCH_SIZE = 32
DEFAULT_EPOCHS = 25
DEFAULT_RUNS = 1

# Decoded-crop cache (toonvision.cache)
DEFAULT_CACHE_BUDGET = 2 * 1024**3  # bytes of decoded uint8 pixels kept in RAM; past it, img/.cache on disk
CACHE_BUDGET_ENV = "TOONVISION_CACHE_BUDGET"  # e.g. 512M, 4G, or 0 for always on disk

FOLDER_LOCK = ".lock"  # held in models/<task>/ and output folders while a command writes there
