"""One Keras model that averages the probabilities of the K best runs (``train --ensemble K``).

    models/<task>/runs/run_<a>.keras ─┐               models/<task>/
    models/<task>/runs/run_<b>.keras ─┼─▶ Average ─▶  ├── ensemble.keras   image -> mean of the members' outputs
    ...                               ┘               └── ensemble.json    best.json's format + members, test metrics

Each member is nested as a functional submodel named ``run_<k>`` and the outputs meet in a
``keras.layers.Average``: no Lambda layer, so the file loads with Keras' safe_mode like any
best.keras, and ``evaluate``, ``predict`` and ``explain`` take it as they take one model. The
members share the training's fixed test split, so the ensemble is scored on crops none of
them trained on (ensemble.json records that split).

Crash safety: the model and its JSON are written under .work/ and renamed into place, model
first; ensemble.json names the model's sha256, so a kill between the two renames is caught on
loading (and repaired by ``train --resume``, which builds the ensemble again).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from toonvision.fsutil import atomic_write_text, file_sha256
from toonvision.layout import ENSEMBLE_INFO, ENSEMBLE_MODEL
from toonvision.ledger import WORK, save_model

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

MEMBER_PREFIX = "run_"  # a member submodel's name: run_<k>
MEAN_LAYER = "mean"


def build_ensemble(members: Mapping[int, keras.Model], image_size: tuple[int, int]) -> keras.Model:
    """A functional model whose output is the mean of ``members``' outputs ({run: model}, at least 2)."""
    import keras  # lazy: TensorFlow takes seconds to import

    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    inputs = keras.Input(shape=(*image_size, 3), name="image")
    outputs = []
    for run, member in members.items():
        # a renamed view of the member (the same layers), so that every nested model has a unique name
        nested = keras.Model(member.inputs[0], member.outputs[0], name=f"{MEMBER_PREFIX}{run}")
        outputs.append(nested(inputs))
    mean = keras.layers.Average(name=MEAN_LAYER, dtype="float32")(outputs)
    return keras.Model(inputs, mean, name="ensemble")


def write_ensemble(out: Path, model: keras.Model, info: Mapping[str, Any]) -> tuple[Path, Path]:
    """Save ``model`` as ``out/ensemble.keras`` and ``info`` (plus the model's sha256) as ensemble.json."""
    work = out / WORK
    work.mkdir(exist_ok=True)
    staged = work / ENSEMBLE_MODEL
    save_model(model, staged)
    info = {**info, "model_sha256": file_sha256(staged)}
    atomic_write_text(work / ENSEMBLE_INFO, json.dumps(info, indent=2) + "\n")
    os.replace(staged, out / ENSEMBLE_MODEL)
    os.replace(work / ENSEMBLE_INFO, out / ENSEMBLE_INFO)
    return out / ENSEMBLE_MODEL, out / ENSEMBLE_INFO


__all__ = ["MEAN_LAYER", "MEMBER_PREFIX", "build_ensemble", "write_ensemble"]
