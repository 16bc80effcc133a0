"""Grad-CAM: where in an image the model looked when it scored each class.

    best.keras + crops (or screenshots with XML)        models/<task>/explain/   (--out DIR)
                 │                               ──▶    ├── cog_bb_flunky_3_gradcam.png
                 ▼                                      └── shot1_obj2_toon_cat_gradcam.png
    last convolutional layer (found automatically,      the image, then one overlay per class
    also inside a nested MobileNetV2 base; --layer)

For class c, Grad-CAM weights each channel k of the layer's feature maps A by the mean
gradient of the class score over the map, and keeps the positive part of the weighted sum:
``relu(sum_k mean(d score_c / d A_k) * A_k)``. The class score is the logit (the head's
activation is bypassed while the gradients are taken), so a confident prediction does not
flatten the gradients; for a sigmoid head the score of classes[0] is the negated logit.
Each heatmap is divided by its maximum (values in [0, 1]) and resized to the image's size; for a
model trained with ``--resize pad`` only the part over the image (not the zero bands) is kept.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toonvision import plots
from toonvision.decode import content_box, model_input
from toonvision.errors import ImageError, UsageError
from toonvision.layout import ENSEMBLE_MODEL, EXPLAIN_DIR
from toonvision.metrics import decide
from toonvision.modelfile import LoadedModel, open_model
from toonvision.predict import InputImage, collect_inputs
from toonvision.problems import Problem, has_errors, without_source

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

GRADCAM_SUFFIX = "_gradcam.png"  # <image>_gradcam.png, one per image or object

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")

FeatureFunction = Callable[["np.ndarray"], tuple]  # images -> (feature maps, model outputs)


@dataclass(frozen=True)
class Explanation:
    """One image's prediction and its heatmaps: one per class, the image's size, values in [0, 1]."""

    file: str
    predicted: str
    confidence: float
    probabilities: tuple[float, ...]
    heatmaps: tuple[np.ndarray, ...] = field(repr=False, compare=False)
    obj: int | None = None
    box: tuple[int, int, int, int] | None = None
    label: str | None = None
    path: Path | None = None


@dataclass(frozen=True)
class ExplainResult:
    """Every explanation, the layer used, and the inputs that could not be read."""

    model: Path
    layer: str
    classes: tuple[str, ...]
    explanations: tuple[Explanation, ...]
    out: Path
    problems: tuple[Problem, ...] = ()

    @property
    def exit_code(self) -> int:
        return 1 if has_errors(self.problems) else 0

    def summary(self) -> str:
        lines = [f"Grad-CAM of {self.model} at layer {self.layer}"]
        for e in self.explanations:
            where = e.file if e.obj is None else f"{e.file} object {e.obj}"
            saved = f" -> {e.path}" if e.path else ""
            lines.append(f"{where}: {e.predicted} {e.confidence:.4f}{saved}")
        return "\n".join(lines)


# -- finding the layer ----------------------------------------------------------------------------


def conv_layer_types() -> tuple[type, ...]:
    import keras

    layers = keras.layers
    return (layers.Conv2D, layers.SeparableConv2D, layers.DepthwiseConv2D, layers.Conv2DTranspose)


def find_conv_layer(model: keras.Model) -> tuple[str, ...]:
    """The path of names to the last 2D convolution, looking inside nested models (MobileNetV2's base)."""
    path = _last_conv(model)
    if path is None:
        raise UsageError(
            f"model {model.name!r} has no convolutional layer; pass --layer NAME with a layer whose output "
            f"is (height, width, channels): {', '.join(_spatial_layer_names(model)) or 'there is none'}"
        )
    return path


def find_layer(model: keras.Model, name: str) -> tuple[str, ...]:
    """The path to the layer called ``name`` (``base/Conv_1`` or just ``Conv_1``), searched depth first."""
    import keras

    parts = tuple(p for p in name.split("/") if p)
    path = _search(model, parts)
    if path is None:
        raise UsageError(
            f"no layer {name!r} in model {model.name!r}; layers with a (height, width, channels) output: "
            f"{', '.join(_spatial_layer_names(model)) or 'none'}"
        )
    layer = _layer_at(model, path)
    if isinstance(layer, keras.Model) or len(layer.output.shape) != 4:
        raise UsageError(
            f"layer {name!r} outputs {tuple(layer.output.shape)}; Grad-CAM needs a layer with a (height, width, "
            f"channels) output, such as {', '.join(_spatial_layer_names(model)[-3:])}"
        )
    return path


def _last_conv(model: keras.Model) -> tuple[str, ...] | None:
    import keras

    for layer in reversed(model.layers):
        if isinstance(layer, keras.Model):
            inner = _last_conv(layer)
            if inner is not None:
                return (layer.name, *inner)
        elif isinstance(layer, conv_layer_types()) and len(layer.output.shape) == 4:
            return (layer.name,)
    return None


def _search(model: keras.Model, parts: tuple[str, ...]) -> tuple[str, ...] | None:
    import keras

    for layer in model.layers:
        if layer.name == parts[0]:
            if len(parts) == 1:
                return (layer.name,)
            if isinstance(layer, keras.Model):
                inner = _search(layer, parts[1:])
                if inner is not None:
                    return (layer.name, *inner)
    if len(parts) == 1:
        for layer in model.layers:
            if isinstance(layer, keras.Model):
                inner = _search(layer, parts)
                if inner is not None:
                    return (layer.name, *inner)
    return None


def _layer_at(model: keras.Model, path: Sequence[str]) -> keras.layers.Layer:
    layer = model
    for name in path:
        layer = layer.get_layer(name)
    return layer


def _spatial_layer_names(model: keras.Model, prefix: str = "") -> list[str]:
    import keras

    names = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            names.extend(_spatial_layer_names(layer, f"{prefix}{layer.name}/"))
        elif not isinstance(layer, keras.layers.InputLayer) and len(layer.output.shape) == 4:
            names.append(f"{prefix}{layer.name}")
    return names


# -- Grad-CAM ---------------------------------------------------------------------------------------


def feature_function(model: keras.Model, path: Sequence[str]) -> FeatureFunction:
    """A function of images returning (the feature maps at ``path``, the model's output).

    A layer inside a nested model (MobileNetV2's base) is not connected to the outer inputs,
    so the outer graph is cut around the nested model: before -> nested (two outputs) -> after.
    """
    import keras

    path = tuple(path)
    inputs, outputs = model.inputs[0], model.outputs[0]
    layer = model.get_layer(path[0])
    if len(path) == 1:
        both = keras.Model(inputs, [layer.output, outputs])
        return lambda x: tuple(both(x, training=False))
    nodes = [n for n in layer._inbound_nodes if n.operation is layer]  # the calls of the nested model
    outer = [n for n in nodes if n.output_tensors and _reaches(outputs, n.output_tensors[0])]
    if len(outer) != 1 or len(outer[0].input_tensors) != 1:
        raise UsageError(
            f"layer {'/'.join(path)} is inside {layer.name!r}, which the model calls {len(outer)} times or "
            "with several inputs; pass --layer with a layer of the outer model"
        )
    node = outer[0]
    inner = feature_function(layer, path[1:])
    before = None if node.input_tensors[0] is inputs else keras.Model(inputs, node.input_tensors[0])
    after = None if node.output_tensors[0] is outputs else _after(inputs, node.output_tensors[0], outputs)

    def run(x):
        h = x if before is None else before(x, training=False)
        features, nested_out = inner(h)
        return features, (nested_out if after is None else after(x, nested_out))

    return run


def _after(inputs: object, nested: object, outputs: object) -> Callable[[object, object], object]:
    """The graph from a nested model's output to the model's output, as a function of (images, that output).

    When the output also depends on the images through other branches (an ensemble averaging
    its members), those branches are computed from the images; the nested output is taken as given.
    """
    import keras

    try:
        tail = keras.Model(nested, outputs)
        return lambda x, h: tail(h, training=False)
    except ValueError:  # the output needs more than the nested model's output
        both = keras.Model([inputs, nested], outputs)
        return lambda x, h: both([x, h], training=False)


def _reaches(output: object, tensor: object) -> bool:
    """Whether ``tensor`` is an ancestor of ``output`` in the symbolic graph (or is it)."""
    seen: set[int] = set()
    stack = [output]
    while stack:
        current = stack.pop()
        if current is tensor:
            return True
        if id(current) in seen:
            continue
        seen.add(id(current))
        history = getattr(current, "_keras_history", None)
        if history is None:
            continue
        operation, node_index, _ = history
        node = operation._inbound_nodes[node_index]
        stack.extend(node.input_tensors)
    return False


@contextlib.contextmanager
def linear_head(model: keras.Model) -> Iterator[str | None]:
    """Bypass the output layer's sigmoid/softmax while inside; yields the activation bypassed (or None)."""
    import keras

    head = model.layers[-1] if model.layers else None
    activation = getattr(head, "activation", None)
    name = getattr(activation, "__name__", None)
    if head is None or name not in ("sigmoid", "softmax"):
        yield None
        return
    head.activation = keras.activations.linear
    try:
        yield name
    finally:
        head.activation = activation


def class_activation_maps(
    model: keras.Model, images: np.ndarray, path: Sequence[str], num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM maps (n, classes, h, w) at the layer's resolution, each scaled to [0, 1], and the
    (n, classes) probabilities of the same forward pass."""
    import tensorflow as tf

    function = feature_function(model, path)
    x = tf.convert_to_tensor(images, dtype=tf.float32)
    with linear_head(model) as bypassed:
        with tf.GradientTape(persistent=True) as tape:
            features, outputs = function(x)
            scores = _class_scores(outputs, num_classes, bypassed)
        gradients = [tape.gradient(score, features) for score in scores]
    del tape
    if any(g is None for g in gradients):
        raise UsageError(f"the output does not depend on layer {'/'.join(path)}; pass another --layer")
    features = features.numpy().astype(np.float64)
    maps = []
    for gradient in gradients:
        weights = gradient.numpy().astype(np.float64).mean(axis=(1, 2))  # (n, channels)
        cam = np.maximum(np.einsum("nhwk,nk->nhw", features, weights), 0.0)
        peak = cam.max(axis=(1, 2), keepdims=True)
        maps.append(np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0))
    return np.stack(maps, axis=1), _probabilities(outputs, bypassed)


def _probabilities(outputs, bypassed: str | None) -> np.ndarray:
    """The head's activation applied to the logits again; one column per class, as LoadedModel gives."""
    import tensorflow as tf

    if bypassed == "softmax":
        outputs = tf.nn.softmax(outputs, axis=-1)
    elif bypassed == "sigmoid":
        outputs = tf.sigmoid(outputs)
    values = np.asarray(outputs, dtype=np.float32).reshape(len(outputs), -1)
    return np.concatenate([1.0 - values, values], axis=1) if values.shape[1] == 1 else values


def _class_scores(outputs, num_classes: int, bypassed: str | None) -> list:
    """One scalar per class (summed over the batch: images do not interact in inference mode)."""
    import tensorflow as tf

    outputs = tf.reshape(outputs, (tf.shape(outputs)[0], -1))
    if outputs.shape[-1] == 1:  # sigmoid: the score of classes[1] is the logit, of classes[0] its negation
        p = outputs[:, 0]
        score = p if bypassed else tf.math.log(p + 1e-12) - tf.math.log(1 - p + 1e-12)
        return [tf.reduce_sum(-score), tf.reduce_sum(score)]
    return [tf.reduce_sum(outputs[:, c]) for c in range(num_classes)]


def resize_heatmap(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A [0, 1] map resized bilinearly to (height, width), still in [0, 1]."""
    from PIL import Image

    height, width = size
    image = Image.fromarray(np.asarray(cam, dtype=np.float32), mode="F")
    resized = np.asarray(image.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    return np.clip(resized, 0.0, 1.0)


def image_heatmap(cam: np.ndarray, size: tuple[int, int], model_size: tuple[int, int], mode: str) -> np.ndarray:
    """A heatmap over the model's input as a map over the (height, width) image it came from: resized, and
    with ``pad`` first cut to the part of the input the image fills (``toonvision.decode.content_box``)."""
    if mode == "stretch":
        return resize_heatmap(cam, size)
    top, left, height, width = content_box(size, model_size, mode)
    over_input = resize_heatmap(cam, model_size)
    return resize_heatmap(over_input[top:top + height, left:left + width], size)


def gradcam(loaded: LoadedModel, image, path: Sequence[str] | None = None) -> Explanation:
    """Predict one PIL image and compute one heatmap per class at the image's own size."""
    path = tuple(path) if path else find_conv_layer(loaded.model)
    info = loaded.info
    x = model_input([image], info.image_size, info.resize)
    maps, probabilities = class_activation_maps(loaded.model, x, path, len(info.classes))
    maps = maps[0]
    height, width = image.size[1], image.size[0]
    heatmaps = tuple(image_heatmap(m, (height, width), info.image_size, info.resize) for m in maps)
    index, confidence = decide(probabilities)
    return Explanation(
        "", loaded.info.classes[int(index[0])], float(confidence[0]), tuple(float(p) for p in probabilities[0]),
        heatmaps,
    )


def explain(
    model: Path,
    paths: Sequence[Path],
    *,
    layer: str | None = None,
    out: Path | None = None,
    classes: Sequence[str] | str | None = None,
    unsafe: bool = False,
    save: bool = True,
) -> ExplainResult:
    """``toonvision explain``: a Grad-CAM figure per image (crops, or the objects of screenshots with XML)."""
    if not paths:
        raise UsageError("nothing to explain: pass image files, folders, or screenshots with their XML beside them")
    inputs, problems = collect_inputs(paths)
    loaded = open_model(model, classes, unsafe)
    path = find_layer(loaded.model, layer) if layer else find_conv_layer(loaded.model)
    suffix = "_ensemble" if loaded.info.path.name == ENSEMBLE_MODEL else ""  # not over best.keras' overlays
    out = Path(out) if out is not None else loaded.info.path.parent / f"{EXPLAIN_DIR}{suffix}"
    used: set[str] = set()
    explanations = []
    for item in inputs:
        try:
            image = item.load()
        except ImageError as exc:
            problems.append(Problem(item.file, without_source(exc, item.file), item.obj))
            continue
        e = gradcam(loaded, image, path)
        target = None
        if save:
            target = out / _file_name(item, used)
            names = loaded.info.names
            titles = [
                f"{names[c]} {p:.0%}" + (" (predicted)" if c == e.predicted else "")
                for c, p in zip(loaded.info.classes, e.probabilities, strict=True)
            ]
            caption = Path(item.file).name + ("" if item.obj is None else f", object {item.obj} ({item.label})")
            title = f"{caption}: Grad-CAM at {'/'.join(path)}"
            plots.plot_gradcam(np.asarray(image), e.heatmaps, titles, target, title)
        explanations.append(Explanation(
            item.file, e.predicted, e.confidence, e.probabilities, e.heatmaps, item.obj, item.box, item.label, target,
        ))
    if not explanations and not problems:
        raise UsageError("no images found to explain")
    return ExplainResult(
        loaded.info.path, "/".join(path), loaded.info.classes, tuple(explanations), out, tuple(problems)
    )


def _file_name(item: InputImage, used: set[str]) -> str:
    stem = Path(item.file).stem
    if item.obj is not None:
        stem = f"{stem}_obj{item.obj}_{item.label}"
    stem = _SAFE_NAME.sub("_", stem)[:120] or "image"
    name, n = f"{stem}{GRADCAM_SUFFIX}", 2
    while name in used:
        name, n = f"{stem}_{n}{GRADCAM_SUFFIX}", n + 1
    used.add(name)
    return name


__all__ = [
    "ExplainResult", "Explanation", "class_activation_maps", "explain", "feature_function", "find_conv_layer",
    "find_layer", "gradcam", "image_heatmap", "linear_head", "resize_heatmap",
]
