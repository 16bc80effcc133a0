"""Fixed-weight colour classifiers, colour crops and hand-made splits: the known-answer models that
the evaluate, modelfile, predict and explain tests score."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
from PIL import Image

from toonvision.layout import Layout
from toonvision.manifest import CropRecord, save_manifest
from toonvision.split import Assignment, SplitPlan, plan_to_dict

SIZE = (24, 16)  # the models' input: height, width
CROP = (20, 30)  # the crops on disk: width, height (resized to SIZE, as in training)
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
CHANNEL = {"red": 0, "green": 1, "blue": 2}




def colour_image(colour: str, size: tuple[int, int] = CROP, seed: int = 0) -> Image.Image:
    """A crop of one colour with some noise; ``size`` is (width, height)."""
    noise = np.random.default_rng(seed).integers(-20, 21, (size[1], size[0], 3))
    return Image.fromarray(np.clip(np.array(COLOURS[colour]) + noise, 0, 255).astype(np.uint8), "RGB")


def colour_model(classes: tuple[str, ...], size: tuple[int, int] = SIZE) -> keras.Model:
    """A fixed-weight classifier that names the dominant colour: right on every crop, by construction.

    1x1 convolution (identity) -> global average -> head that reads each class's channel.
    Binary: one sigmoid unit, P(classes[1]), like the project's binary models.
    """
    inputs = keras.Input((*size, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    conv = keras.layers.Conv2D(3, 1, use_bias=False, name="conv")
    x = conv(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    binary = len(classes) == 2
    head = keras.layers.Dense(1 if binary else len(classes), activation="sigmoid" if binary else "softmax", name="head")
    outputs = head(x)
    model = keras.Model(inputs, outputs)
    conv.set_weights([np.eye(3, dtype="float32").reshape(1, 1, 3, 3)])
    kernel = np.zeros((3, 1 if binary else len(classes)), dtype="float32")
    if binary:
        kernel[CHANNEL[classes[1]], 0], kernel[CHANNEL[classes[0]], 0] = 10.0, -10.0
    else:
        for j, cls in enumerate(classes):
            kernel[CHANNEL[cls], j] = 10.0
    head.set_weights([kernel, np.zeros(kernel.shape[1], dtype="float32")])
    if binary:
        model.compile(loss="binary_crossentropy", metrics=[keras.metrics.BinaryAccuracy(name="accuracy")])
    else:
        model.compile(loss="sparse_categorical_crossentropy",
                      metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    return model


def colour_pool(img_dir: Path, crops: list[tuple[str, str, str]]) -> tuple[Layout, dict[str, str]]:
    """A pool of (label, split, content colour) crops named so the content can be told from the path."""
    layout = Layout.from_dirs(img_dir, img_dir.parent / "models")
    records, content = [], {}
    for n, (label, _split, colour) in enumerate(crops):
        crop = f"{label}/{label}_{n}_looks_{colour}.png"
        (layout.pool / label).mkdir(parents=True, exist_ok=True)
        colour_image(colour, seed=n).save(layout.pool / crop)
        records.append(CropRecord(crop, label, label, n, f"shot{n}.png", 0, 0, CROP[0], CROP[1], CROP[0], CROP[1],
                                  f"sha{n}", f"crop{n}"))
        content[crop] = colour
    save_manifest(layout.manifest, records)
    return layout, content


def hand_plan(
    crops: list[tuple[str, str, str]], content: dict[str, str], task: str = "label", seed: int = 7
) -> SplitPlan:
    """The split the crops say, in the order split_plan uses (split, class, crop)."""
    by_label = {c.split("/")[0]: [] for c in content}
    for (label, split, _colour), crop in zip(crops, content, strict=True):
        by_label[label].append(Assignment(crop, label, label, split, f"shot{crop}"))
    order = {"train": 0, "validate": 1, "test": 2}
    assignments = sorted(
        (a for group in by_label.values() for a in group), key=lambda a: (order[a.split], a.cls, a.crop)
    )
    return SplitPlan(task, seed, (0.5, 0.25, 0.25), True, tuple(sorted(by_label)), tuple(assignments))


def save_best(layout: Layout, model: keras.Model, plan: SplitPlan, recorded: dict | None = None) -> Path:
    """models/<task>/best.keras + best.json as `toonvision train` writes them."""
    out = layout.task_models(plan.task)
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / "best.keras")
    info = {
        "task": plan.task,
        "classes": list(plan.classes),
        "display_names": {c: c.title() for c in plan.classes},
        "image_size": list(SIZE),
        "model": "colour",
        "run": 3,
        "seed": plan.seed,
        "split": plan_to_dict(plan),
        "metrics": {"test": recorded or {"loss": 0.0, "accuracy": 0.0}},
        "epochs": 1,
        "batch_size": 4,
        "versions": {},
        "weights": None,
        "created": "2024-01-01T00:00:00+00:00",
    }
    (out / "best.json").write_text(json.dumps(info))
    return out / "best.keras"


# Three classes; every class has crops that look like another class in the test split.
THREE = [
    ("red", "train", "red"),
    ("red", "validate", "red"),
    ("red", "test", "red"),
    ("red", "test", "green"),
    ("red", "test", "red"),
    ("green", "train", "green"),
    ("green", "validate", "green"),
    ("green", "test", "green"),
    ("green", "test", "blue"),
    ("blue", "train", "blue"),
    ("blue", "validate", "blue"),
    ("blue", "test", "blue"),
    ("blue", "test", "blue"),
    ("blue", "test", "red"),
]
TWO = [
    ("red", "train", "red"),
    ("red", "validate", "red"),
    ("red", "test", "green"),
    ("red", "test", "red"),
    ("green", "train", "green"),
    ("green", "validate", "green"),
    ("green", "test", "green"),
    ("green", "test", "red"),
    ("green", "test", "red"),
]
