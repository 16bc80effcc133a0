"""Keras classifiers by name, compiled and ready to fit.

    baseline     Rescaling(1/255) -> MaxPool 2 -> Conv 16 -> MaxPool 2 -> Conv 32 -> MaxPool 2
                 -> Conv 32 -> MaxPool 2 -> Flatten -> head         (25,537 parameters, 600x200 binary)
    optimized    baseline + Dropout before the head + learning-rate decay; trained with the
                 fused flip/rotation/zoom of ``toonvision.augment`` in the input pipeline
    smallres     Rescaling(1/255) -> Conv 32 + BN -> 3 x (MaxPool 2 -> residual block of two Conv + BN,
                 32/64/128 filters) -> GlobalAveragePooling -> Dropout -> head; from scratch, for small
                 data; downsamples by max-pooling only (no strided convolutions: see _smallres_features)
    mobilenetv2  frozen MobileNetV2 base -> GlobalAveragePooling -> BatchNorm -> Dense 32 relu
                 -> Dropout 0.5 -> head; ImageNet weights from Keras' cache, downloaded into it
                 when missing; ``unfreeze_top`` opens its last block for a fine-tuning phase
    (tuned)      what a :class:`Hyperparameters` describes (``toonvision tune`` finds them,
                 ``train --hparams`` builds them): a CNN of N conv blocks, or a pretrained base

Every model takes float RGB images in 0..255 (what ``image_dataset_from_directory`` yields)
and does its own input scaling, so a saved model needs no outside preprocessing. Heads:
1 sigmoid unit + binary cross-entropy for 2 classes; softmax + sparse categorical
cross-entropy for more. Each ``build_model`` call compiles a fresh optimizer.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from toonvision.errors import TrainingError, UsageError

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

LEARNING_RATE = 1e-3
LR_DECAY_RATE = 0.94  # per epoch: about a quarter of the initial rate after 25 epochs
DEFAULT_DECAY_STEPS = 100  # used when the caller does not say how many steps make an epoch
MOBILENET_MIN_SIZE = 32
BASELINE_MIN_SIZE = 44  # smallest side that survives 4 poolings and 3 unpadded 3x3 convolutions
MOBILENET_ALPHA = 1.0
MOBILENET_FINE_TUNE_FROM = "block_16_expand"  # MobileNetV2's last inverted-residual block, then Conv_1
FINE_TUNE_RATE_FACTOR = 0.1  # the second phase of --fine-tune learns at a tenth of LEARNING_RATE
DEFAULT_FINE_TUNE_EPOCHS = 5
SMALLRES_WIDTHS = (32, 64, 128)  # filters of the stem/first block, then of each later block
SMALLRES_MIN_SIZE = 8  # three 2x2 poolings leave at least 1x1
# Keras' default 0.99 lets the moving statistics lag far behind the weights on small data (a few hundred
# steps in all): measured on synthetic suits, validation accuracy stayed at chance while training reached 0.96.
SMALLRES_BN_MOMENTUM = 0.9
_MOBILENET_SQUARE_SIZES = (96, 128, 160, 192, 224)
# Where keras.applications.MobileNetV2 downloads its weights from (its BASE_WEIGHT_PATH; a test checks they agree).
MOBILENET_WEIGHTS_ORIGIN = "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet_v2/"


FeatureBuilder = Callable[["keras.KerasTensor", tuple[int, int], "str | Path | None"], "keras.KerasTensor"]


@dataclass(frozen=True)
class ModelSpec:
    """What a model name means to the rest of the pipeline, and how it is built."""

    name: str
    augment: bool  # whether training feeds it augmented batches (see toonvision.augment)
    uses_weights: bool  # whether --weights applies (the builder receives them; the others ignore them)
    description: str
    features: FeatureBuilder = field(repr=False)  # inputs, (height, width), weights -> features before the head
    min_size: int = BASELINE_MIN_SIZE  # smallest input side, in pixels
    dropout_binary: float | None = None  # default dropout rate before the head, 2 classes
    dropout_multiclass: float | None = None  # the same for 3 or more classes
    lr_decay: bool = False  # exponential learning-rate decay per epoch instead of a constant rate
    fine_tune_from: str | None = None  # first layer of the pretrained base that --fine-tune unfreezes


def _baseline_features(inputs: keras.KerasTensor, image_size: tuple[int, int],
                       weights: str | Path | None) -> keras.KerasTensor:
    """The original ToonVision convolutions (size and weights do not apply)."""
    from keras import layers

    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = layers.MaxPooling2D(2, name="pool_0")(x)
    for index, filters in enumerate((16, 32, 32), start=1):
        x = layers.Conv2D(filters, 3, activation="relu", name=f"conv_{index}")(x)
        x = layers.MaxPooling2D(2, name=f"pool_{index}")(x)
    return layers.Flatten(name="flatten")(x)


def _smallres_features(inputs: keras.KerasTensor, image_size: tuple[int, int],
                       weights: str | Path | None) -> keras.KerasTensor:
    """A small residual CNN with batch normalisation and global average pooling (size and weights do not apply).

    Every convolution has stride 1 and every downsampling is a 2x2 max-pool: with strided
    convolutions, TensorFlow's oneDNN CPU kernels aborted training of such a network on some CPUs
    ("could not create a primitive descriptor for the reorder primitive"); this layout trains
    with TensorFlow's default environment (a test trains it in a clean subprocess).
    """
    from keras import layers

    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    x = _conv_bn(x, SMALLRES_WIDTHS[0], "stem")
    x = layers.Activation("relu", name="stem_relu")(x)
    for index, filters in enumerate(SMALLRES_WIDTHS, start=1):
        x = layers.MaxPooling2D(2, name=f"pool_{index}")(x)
        x = _residual_block(x, filters, f"block_{index}")
    return layers.GlobalAveragePooling2D(name="global_pool")(x)


def _conv_bn(x: keras.KerasTensor, filters: int, name: str, kernel: int = 3) -> keras.KerasTensor:
    from keras import layers

    x = layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=f"{name}_conv")(x)
    return layers.BatchNormalization(momentum=SMALLRES_BN_MOMENTUM, name=f"{name}_bn")(x)


def _residual_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    """relu(x + BN(conv(relu(BN(conv(x)))))), with a 1x1 convolution on the shortcut when the width changes."""
    from keras import layers

    shortcut = x if x.shape[-1] == filters else _conv_bn(x, filters, f"{name}_shortcut", kernel=1)
    y = layers.Activation("relu", name=f"{name}_relu_1")(_conv_bn(x, filters, f"{name}_1"))
    y = _conv_bn(y, filters, f"{name}_2")
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def _mobilenet_features(inputs: keras.KerasTensor, image_size: tuple[int, int],
                        weights: str | Path | None) -> keras.KerasTensor:
    """A frozen MobileNetV2 base (ImageNet weights from Keras' cache, or a file) and a small dense layer."""
    import keras
    from keras import layers

    base = keras.applications.MobileNetV2(
        input_shape=(*image_size, 3),
        alpha=MOBILENET_ALPHA,
        include_top=False,
        weights=resolve_mobilenet_weights(weights, image_size),
    )
    base.trainable = False
    # mobilenet_v2.preprocess_input maps 0..255 to -1..1.
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(inputs)
    x = base(x, training=False)  # keep the frozen BatchNorm statistics in inference mode
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.BatchNormalization(name="batch_norm")(x)
    return layers.Dense(32, activation="relu", name="dense")(x)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec("baseline", False, False, "the original ToonVision network", _baseline_features),
        # 0.9 is the original binary setting. A softmax over 4+ classes has to separate every pair
        # of classes from the same 11k flattened features, with fewer crops per class; dropping 90%
        # of them starves it, so multiclass heads keep half.
        ModelSpec("optimized", True, False, "baseline + augmentation, dropout and learning-rate decay",
                  _baseline_features, dropout_binary=0.9, dropout_multiclass=0.5, lr_decay=True),
        ModelSpec("smallres", False, False, "small residual CNN with batch norm, from scratch",
                  _smallres_features, min_size=SMALLRES_MIN_SIZE, dropout_binary=0.3, dropout_multiclass=0.3,
                  lr_decay=True),
        ModelSpec("mobilenetv2", False, True, "frozen MobileNetV2 base + small trainable head",
                  _mobilenet_features, min_size=MOBILENET_MIN_SIZE, dropout_binary=0.5, dropout_multiclass=0.5,
                  fine_tune_from=MOBILENET_FINE_TUNE_FROM),
    )
}
MODEL_NAMES = tuple(MODELS)


def get_model_spec(name: str) -> ModelSpec:
    """The spec of a model name, or a UsageError listing the names there are."""
    try:
        return MODELS[name]
    except KeyError:
        raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}") from None


def default_dropout(name: str, num_classes: int) -> float | None:
    """Dropout rate before the head when the caller does not choose one."""
    spec = get_model_spec(name)
    return spec.dropout_binary if num_classes == 2 else spec.dropout_multiclass


def build_model(
    name: str,
    num_classes: int,
    image_size: tuple[int, int],
    *,
    dropout: float | None = None,
    weights: str | Path | None = None,
    seed: int | None = None,
    steps_per_epoch: int | None = None,
    mixed_precision: bool = False,
) -> keras.Model:
    """Build and compile model ``name`` for ``num_classes`` classes and (height, width) inputs.

    ``weights`` applies to ``mobilenetv2`` only: "imagenet" (Keras' cache, downloaded into it
    when missing), a path to a weights file, or None to start from random weights.
    ``seed`` seeds Keras' global generators, so initial weights and dropout are reproducible.
    ``steps_per_epoch`` paces the learning-rate decay of ``optimized`` per epoch.
    ``mixed_precision`` computes in float16 with float32 weights and head (fast on GPUs with
    tensor cores, slow on CPUs); compile then scales the loss against float16 underflow.
    """
    import keras

    spec = get_model_spec(name)
    _check_arguments(spec, num_classes, image_size, dropout)
    if seed is not None:
        keras.utils.set_random_seed(seed)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16" if mixed_precision else "float32")
    try:
        return _build(spec, num_classes, image_size, dropout, weights, steps_per_epoch)
    finally:
        keras.config.set_dtype_policy(previous)  # the policy applies to layers built from here on only


def _build(
    spec: ModelSpec, num_classes: int, image_size: tuple[int, int], dropout: float | None,
    weights: str | Path | None, steps_per_epoch: int | None,
) -> keras.Model:
    import keras

    rate = dropout if dropout is not None else default_dropout(spec.name, num_classes)
    inputs = keras.Input(shape=(*image_size, 3), name="image")
    features = spec.features(inputs, image_size, weights)
    if rate is not None:
        features = keras.layers.Dropout(rate, name="dropout")(features)
    outputs = _head(features, num_classes)
    model = keras.Model(inputs, outputs, name=spec.name)
    loss, metric = _loss_and_metric(num_classes)
    model.compile(optimizer=_optimizer(spec, steps_per_epoch), loss=loss, metrics=[metric])
    return model


def unfreeze_top(model: keras.Model) -> tuple[str, ...]:
    """Start the second phase of --fine-tune: unfreeze the top of the pretrained base, recompile slower.

    The base's layers from the spec's ``fine_tune_from`` to its end become trainable, except
    BatchNormalization, which keeps its ImageNet statistics and stays frozen (as Keras'
    transfer-learning guide advises; the base also runs in inference mode). The model is
    recompiled with a fresh Adam at LEARNING_RATE * FINE_TUNE_RATE_FACTOR, so the first steps do
    not wreck the pretrained features. Returns the names of the layers with weights made trainable.
    """
    import keras

    spec = get_model_spec(model.name)
    base = next((layer for layer in model.layers if isinstance(layer, keras.Model)), None)
    if spec.fine_tune_from is None or base is None:
        raise UsageError(f"model {model.name} has no pretrained base to fine-tune")
    first = [layer.name for layer in base.layers].index(spec.fine_tune_from)
    base.trainable = True
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= first and not isinstance(layer, keras.layers.BatchNormalization)
    units = model.output_shape[-1]
    loss, metric = _loss_and_metric(2 if units == 1 else units)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE * FINE_TUNE_RATE_FACTOR),
                  loss=loss, metrics=[metric])
    return tuple(layer.name for layer in base.layers if layer.trainable and layer.weights)


def _check_arguments(
    spec: ModelSpec, num_classes: int, image_size: tuple[int, int], dropout: float | None
) -> None:
    if num_classes < 2:
        raise UsageError(f"a classifier needs at least 2 classes, got {num_classes}")
    if len(image_size) != 2 or min(image_size) < 1:
        raise UsageError(f"image size must be (height, width) in pixels, got {image_size}")
    minimum = spec.min_size
    if min(image_size) < minimum:
        raise UsageError(
            f"model {spec.name} needs images of at least {minimum}x{minimum} pixels, "
            f"got {image_size[0]}x{image_size[1]}; pass a larger --image-size"
        )
    if dropout is not None and not 0.0 <= dropout < 1.0:
        raise UsageError(f"dropout must be in [0, 1), got {dropout}")


def resolve_mobilenet_weights(
    weights: str | Path | None, image_size: tuple[int, int], download: bool = True,
) -> str | None:
    """Turn --weights into a local file for MobileNetV2, or None (from scratch).

    "imagenet" is the file Keras itself uses for this input size: found in Keras' cache
    (``$KERAS_HOME`` or ~/.keras, then /tmp/.keras), else downloaded into it as
    ``keras.applications`` does; offline, the error names the file, its address and the folder.
    ``download=False`` takes the cache only: a missing file is a TrainingError saying so.
    """
    if weights is None or str(weights).lower() == "none":
        return None
    if str(weights) != "imagenet":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise TrainingError(
                f"{path}: no such weights file; pass the path of a MobileNetV2 no-top .h5 file, "
                "'imagenet' for Keras' ImageNet weights, or 'none' to train from scratch"
            )
        return str(path)
    file_name = mobilenet_weights_file_name(image_size)
    for folder in _keras_cache_dirs():
        candidate = folder / "models" / file_name
        if candidate.is_file():
            return str(candidate)
    if not download:
        raise TrainingError(f"{file_name} is not in Keras' cache ({_keras_cache_dirs()[0] / 'models'}); "
                            "`toonvision train --model mobilenetv2` downloads it there")
    return download_weights(file_name, MOBILENET_WEIGHTS_ORIGIN + file_name, "MobileNetV2")


def download_weights(file_name: str, origin: str, network: str) -> str:
    """Download ``origin`` into Keras' cache (models/``file_name``) with Keras' own downloader.

    The download goes to a temporary name first and is renamed when complete, so a cut
    download never leaves a file that a later run would take for the weights. Any failure
    (offline, proxy, HTTP error) becomes a TrainingError that says where to put the file.
    """
    import keras  # lazy: start-up time

    home = _keras_cache_dirs()[0]
    try:
        home.mkdir(parents=True, exist_ok=True)  # as Keras does on import; get_file takes a missing home as read-only
    except OSError:
        pass  # get_file then falls back to /tmp/.keras, as for Keras' own downloads
    logger.info("downloading the ImageNet weights of %s from %s into %s", network, origin, home / "models")
    try:
        part = Path(keras.utils.get_file(
            f"{file_name}.part-{os.getpid()}", origin, cache_dir=str(home), cache_subdir="models",
            force_download=True,
        ))
    except Exception as exc:  # get_file turns URLError/HTTPError into a bare Exception
        raise TrainingError(
            f"could not download the ImageNet weights of {network}, {file_name}, from {origin} ({exc}); "
            f"on a machine with network, download that address and put the file in {home / 'models'} "
            "(Keras' cache: $KERAS_HOME/models, default ~/.keras/models), or pass --weights PATH to the file, "
            "or --weights none to train from scratch"
        ) from None
    final = part.with_name(file_name)  # get_file falls back to /tmp/.keras when the home is read-only
    os.replace(part, final)
    return str(final)


def mobilenet_weights_file_name(image_size: tuple[int, int]) -> str:
    """The file Keras uses for no-top MobileNetV2 weights at this input size."""
    return (
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_"
        f"{float(MOBILENET_ALPHA)}_{_weights_rows(image_size)}_no_top.h5"
    )


def _weights_rows(image_size: tuple[int, int]) -> int:
    height, width = image_size
    return height if height == width and height in _MOBILENET_SQUARE_SIZES else 224


def _keras_cache_dirs() -> list[Path]:
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser()
    return [home, Path("/tmp/.keras")]


def _head(features: keras.KerasTensor, num_classes: int) -> keras.KerasTensor:
    from keras import layers

    # float32 even under mixed precision: a float16 sigmoid/softmax saturates and its loss underflows
    if num_classes == 2:
        return layers.Dense(1, activation="sigmoid", name="head", dtype="float32")(features)
    return layers.Dense(num_classes, activation="softmax", name="head", dtype="float32")(features)


def _loss_and_metric(num_classes: int) -> tuple[str, keras.metrics.Metric]:
    import keras

    if num_classes == 2:
        return "binary_crossentropy", keras.metrics.BinaryAccuracy(name="accuracy")
    return "sparse_categorical_crossentropy", keras.metrics.SparseCategoricalAccuracy(name="accuracy")


def _optimizer(spec: ModelSpec, steps_per_epoch: int | None) -> keras.optimizers.Optimizer:
    return _adam(LEARNING_RATE, spec.lr_decay, steps_per_epoch)


# -- tuned models: built from hyperparameters (toonvision.tune finds them, train --hparams uses them) ----

FAMILIES = ("cnn", "pretrained")
PRETRAINED_BASES = ("mobilenetv2",)
LR_SCHEDULES = ("constant", "exponential")
CLASS_WEIGHTS = ("none", "balanced")
MAX_FILTERS = 256  # filters double per block up to this
HPARAMS_FORMAT = 1


@dataclass(frozen=True)
class Hyperparameters:
    """One point of ``toonvision tune``'s search space: a model and how to train it; validated.

    ``cnn``: Rescaling -> MaxPool 2 -> ``conv_blocks`` x [Conv ``kernel_size`` (``filters``,
    doubling per block), BatchNorm if ``batch_norm``, ReLU, MaxPool 2] -> Flatten -> Dropout -> head.
    ``pretrained``: ``base`` with ImageNet weights, its top ``fine_tune`` layers trainable (its
    BatchNorm statistics stay frozen) -> GlobalAveragePooling -> Dropout -> head. Both: Adam at
    ``learning_rate``, constant or decayed per epoch; ``class_weight`` and ``augment`` apply to fit.
    """

    family: str = "cnn"
    conv_blocks: int = 3
    filters: int = 16
    kernel_size: int = 3
    batch_norm: bool = False
    dropout: float = 0.0
    learning_rate: float = LEARNING_RATE
    lr_schedule: str = "constant"
    class_weight: str = "none"
    augment: bool = False
    base: str = "mobilenetv2"
    fine_tune: int = 0

    def __post_init__(self) -> None:
        for name, choices in (("family", FAMILIES), ("base", PRETRAINED_BASES), ("lr_schedule", LR_SCHEDULES),
                              ("class_weight", CLASS_WEIGHTS)):
            value = getattr(self, name)
            if value not in choices:
                raise UsageError(f"hyperparameter {name} must be one of {', '.join(choices)}, got {value!r}")
        for name, minimum in (("conv_blocks", 1), ("filters", 1), ("kernel_size", 1), ("fine_tune", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise UsageError(f"hyperparameter {name} must be an integer >= {minimum}, got {value!r}")
        for name in ("batch_norm", "augment"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"hyperparameter {name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"hyperparameter dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.learning_rate, (int, float)) or not 0.0 < self.learning_rate < 1.0:
            raise UsageError(f"hyperparameter learning_rate must be in (0, 1), got {self.learning_rate!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, object], where: str = "hyperparameters") -> Hyperparameters:
        """Validated hyperparameters from a mapping (unknown names are an error; missing ones take defaults)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UsageError(
                f"{where}: unknown hyperparameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        try:
            return cls(**dict(values))
        except UsageError as exc:
            raise UsageError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, object]:
        """The hyperparameters that apply to this family, JSON-ready."""
        values = asdict(self)
        cnn_only = ("conv_blocks", "filters", "kernel_size", "batch_norm")
        unused = ("base", "fine_tune") if self.family == "cnn" else cnn_only
        return {k: v for k, v in values.items() if k not in unused}

    @property
    def min_size(self) -> int:
        """Smallest input side: the first pooling and each block halve it, and one pixel must be left."""
        return MOBILENET_MIN_SIZE if self.family == "pretrained" else 2 ** (self.conv_blocks + 1)

    @property
    def uses_weights(self) -> bool:
        return self.family == "pretrained"


def load_hparams(path: str | Path) -> Hyperparameters:
    """The hyperparameters of a ``best_hparams.json`` (its "hyperparameters") or of a plain JSON mapping."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the hyperparameters file ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise UsageError(f"{path}: not a JSON file ({exc}); pass the best_hparams.json that tune wrote") from None
    values = data.get("hyperparameters", data) if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise UsageError(f"{path}: expected a JSON object of hyperparameters (tune's best_hparams.json)")
    return Hyperparameters.from_dict(values, str(path))


def build_from_hparams(
    hparams: Hyperparameters | Mapping[str, object],
    num_classes: int,
    image_size: tuple[int, int],
    *,
    weights: str | Path | None = None,
    seed: int | None = None,
    steps_per_epoch: int | None = None,
) -> keras.Model:
    """Build and compile the model ``hparams`` describes (see :class:`Hyperparameters`).

    ``weights`` applies to the pretrained family as for ``build_model`` (a local file or None).
    """
    import keras
    from keras import layers

    spec = hparams if isinstance(hparams, Hyperparameters) else Hyperparameters.from_dict(hparams)
    if num_classes < 2:
        raise UsageError(f"a classifier needs at least 2 classes, got {num_classes}")
    if len(image_size) != 2 or min(image_size) < spec.min_size:
        what = f"{spec.conv_blocks} pooling blocks" if spec.family == "cnn" else spec.base
        raise UsageError(
            f"{what} need images of at least {spec.min_size}x{spec.min_size} pixels, "
            f"got {image_size[0]}x{image_size[1]}; pass a larger --image-size"
        )
    if seed is not None:
        keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(*image_size, 3), name="image")
    if spec.family == "cnn":
        x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
        x = layers.MaxPooling2D(2, name="pool_0")(x)
        for index in range(1, spec.conv_blocks + 1):
            filters = min(MAX_FILTERS, spec.filters * 2 ** (index - 1))
            x = layers.Conv2D(filters, spec.kernel_size, padding="same", use_bias=not spec.batch_norm,
                              name=f"conv_{index}")(x)
            if spec.batch_norm:
                x = layers.BatchNormalization(name=f"batch_norm_{index}")(x)
            x = layers.ReLU(name=f"relu_{index}")(x)
            x = layers.MaxPooling2D(2, name=f"pool_{index}")(x)
        x = layers.Flatten(name="flatten")(x)
    else:
        base = keras.applications.MobileNetV2(
            input_shape=(*image_size, 3), alpha=MOBILENET_ALPHA, include_top=False,
            weights=resolve_mobilenet_weights(weights, image_size),
        )
        base.trainable = spec.fine_tune > 0
        for layer in base.layers[: max(0, len(base.layers) - spec.fine_tune)]:
            layer.trainable = False
        x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")(inputs)
        x = base(x, training=False)  # BatchNorm statistics stay frozen, fine-tuned or not
        x = layers.GlobalAveragePooling2D(name="pool")(x)
    if spec.dropout > 0:
        x = layers.Dropout(spec.dropout, name="dropout")(x)
    outputs = _head(x, num_classes)
    model = keras.Model(inputs, outputs, name=f"tuned_{spec.family}")
    loss, metric = _loss_and_metric(num_classes)
    model.compile(optimizer=_adam(spec.learning_rate, spec.lr_schedule == "exponential", steps_per_epoch),
                  loss=loss, metrics=[metric])
    return model


def _adam(rate: float, decay: bool, steps_per_epoch: int | None) -> keras.optimizers.Optimizer:
    import keras

    if decay:
        rate = keras.optimizers.schedules.ExponentialDecay(
            initial_learning_rate=rate, decay_steps=steps_per_epoch or DEFAULT_DECAY_STEPS, decay_rate=LR_DECAY_RATE,
        )
    return keras.optimizers.Adam(learning_rate=rate)
