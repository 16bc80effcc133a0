"""Defaults and limits shared by the library and the CLI, and the image-size type ``HW``.

Artifact names and folders (``best.keras``, ``evaluation/``, ``img/reports/``) live in
``toonvision.layout``; the defaults of one stage only stay in that stage's module.
"""

from __future__ import annotations

import re
from typing import NamedTuple


class HW(NamedTuple):
    """An image size in pixels, height first as Keras has it; unpacks as ``height, width = size``."""

    height: int
    width: int

    def as_text(self) -> str:
        """``HEIGHTxWIDTH``, as the CLI takes it: ``600x200``."""
        return f"{self.height}x{self.width}"


_HW_PATTERN = re.compile(r"\s*(\d+)\s*[x\u00d7]\s*(\d+)\s*", re.ASCII | re.IGNORECASE)


def parse_hw(text: str) -> HW:
    """``"600x200"`` (or ``600×200``) -> ``HW(height=600, width=200)``; ValueError naming the form otherwise."""
    match = _HW_PATTERN.fullmatch(text)
    if match is None or min(int(match[1]), int(match[2])) < 1:
        raise ValueError(f"expected HEIGHTxWIDTH in pixels, e.g. {DEFAULT_IMAGE_SIZE.as_text()}; got {text!r}")
    return HW(int(match[1]), int(match[2]))


# Files
PIL_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")  # screenshots, predict
KERAS_IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # what image_dataset_from_directory reads
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
DEFAULT_IMAGE_SIZE = HW(600, 200)  # entities are tall
IMAGE_SIZE_AUTO = "auto"  # --image-size auto: chosen from the task's crop sizes (decode.auto_image_size)
AUTO_SIZE_TASKS = ("label",)  # tasks whose default --image-size is auto: any labelImg data, crops of any shape
AUTO_SIZE_MULTIPLE = 16  # auto sizes are multiples of this
AUTO_SIZE_MAX_SIDE = 64  # the longer auto side at most (aspect kept): CPU training time grows with the pixels
RESIZE_MODES = ("stretch", "pad")  # stretch: tf.image.resize; pad: aspect kept, zero bands (Keras' pad_to_aspect_ratio)
DEFAULT_RESIZE = "stretch"
DEFAULT_BATCH_SIZE = 32
DEFAULT_EPOCHS = 25
DEFAULT_RUNS = 1
DEFAULT_MODEL = "baseline"  # the ToonVision tasks: the original project's network, at 600x200
GENERIC_MODEL = "smallres"  # the generic tasks (any labelImg data): the residual CNN that measured best (README)
DEFAULT_WEIGHTS = "imagenet"  # mobilenetv2's base: ImageNet weights from Keras' cache (downloaded when missing)


def default_image_size(task: str) -> HW | str:
    """The --image-size a task gets when none is given: auto for the generic tasks, 600x200 for ToonVision's."""
    return IMAGE_SIZE_AUTO if task in AUTO_SIZE_TASKS else DEFAULT_IMAGE_SIZE


def default_model(task: str) -> str:
    """The --model a task gets when none is given: smallres for the generic tasks, baseline for ToonVision's."""
    return GENERIC_MODEL if task in AUTO_SIZE_TASKS else DEFAULT_MODEL


# Imbalance and selection (toonvision.train, toonvision.compare), chosen by measurement (README)
CLASS_WEIGHT_MODES = ("balanced", "none")  # inverse-frequency class weights on the run's train split, or none
DEFAULT_CLASS_WEIGHT = "balanced"
SELECT_METRICS = ("val_loss", "val_macro_f1", "val_accuracy")  # --select: validation metrics that choose
DEFAULT_SELECT = "val_macro_f1"  # the validation metric that picks the run and, within it, the epoch
DEFAULT_PATIENCE: int | None = 5  # epochs without a better validation metric before a run stops (None: never)

# Comparing models (toonvision.compare)
DEFAULT_COMPARE_MODELS = ("baseline", "optimized")
DEFAULT_COMPARE_RUNS = 5
DEFAULT_COMPARE_SEED = 0

# Searching (toonvision.tune)
TUNE_ALGORITHMS = ("hyperband", "random", "bayesian")
TUNE_OBJECTIVES = ("val_loss", "val_macro_f1", "val_accuracy")  # --select; the first is the default
DEFAULT_TUNE_ALGORITHM = "hyperband"
DEFAULT_TUNE_TRIALS = 10
DEFAULT_TUNE_EPOCHS = 10
DEFAULT_TUNE_SEED = 0
DEFAULT_MAX_BLOCKS = 4  # conv blocks of the largest CNN searched

# Evaluating and predicting
DEFAULT_EVALUATION_SPLIT = "test"
DEFAULT_WORST = 16  # most confident mistakes in worst_predictions.png
PREDICTION_FORMATS = ("table", "csv", "json")

# Exporting (toonvision.export)
EXPORT_FORMATS = ("savedmodel", "onnx", "litert")
EXPORT_TOLERANCE = 1e-4  # largest difference allowed between an export's probabilities and Keras'

# Synthetic screenshots (toonvision.synth)
DEFAULT_SYNTH_COUNT = 100
DEFAULT_SYNTH_SEED = 0
DEFAULT_SYNTH_SIZE = HW(600, 800)  # the original screenshots' size
DEFAULT_TOON_SHARE = 148 / 674  # the original dataset: 526 Cogs and 148 Toons

# Decoded-crop cache (toonvision.cache)
DEFAULT_CACHE_BUDGET = 2 * 1024**3  # bytes of decoded uint8 pixels kept in RAM; past it, img/.cache on disk
CACHE_BUDGET_ENV = "TOONVISION_CACHE_BUDGET"  # e.g. 512M, 4G, or 0 for always on disk

FOLDER_LOCK = ".lock"  # held in models/<task>/ and output folders while a command writes there
DEFAULT_FOLDS = 5  # cv and audit: K of the grouped, stratified K-fold
DEFAULT_CV_SEED = 0  # fixed, so that `audit` finds the cross-validation it ran before
