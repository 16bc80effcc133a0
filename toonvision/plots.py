"""Figures from numbers: each function takes data, saves a PNG and returns its path.

Plot functions never train, split or compute metrics; they draw what they are given.
matplotlib is used through ``Figure`` objects (no pyplot state, no display needed).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

_DPI = 100


# -- training -----------------------------------------------------------------------------------


def plot_training_curves(
    histories: Sequence[Mapping[str, Sequence[float | None]]], path: Path, title: str = ""
) -> Path:
    """Accuracy and loss per epoch (train and validation): every run faint, the mean over runs bold."""
    import numpy as np
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(12, 4.5), dpi=_DPI)
    panels = (("accuracy", "val_accuracy", "accuracy"), ("loss", "val_loss", "loss"))
    for index, (train_key, val_key, name) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 2, index)
        for key, colour, label in ((train_key, "tab:blue", "train"), (val_key, "tab:orange", "validation")):
            curves = [_as_floats(h.get(key, ())) for h in histories]
            curves = [c for c in curves if len(c)]
            if not curves:
                continue
            length = max(len(c) for c in curves)
            stacked = np.full((len(curves), length), np.nan)
            for row, curve in enumerate(curves):
                stacked[row, : len(curve)] = curve
                axes.plot(range(1, len(curve) + 1), curve, color=colour, alpha=0.15, linewidth=0.8)
            with warnings.catch_warnings():  # an epoch where every run diverged has no mean
                warnings.simplefilter("ignore", RuntimeWarning)
                mean = np.nanmean(stacked, axis=0)
            axes.plot(range(1, length + 1), mean, color=colour, linewidth=2.2,
                      label=f"{label} (mean of {len(curves)})")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel("epoch")
        axes.set_ylabel(name)
        axes.set_title(name)
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_test_boxplots(
    test_accuracy: Sequence[float], test_loss: Sequence[float], path: Path, title: str = ""
) -> Path:
    """Box plots of test accuracy and test loss over runs, every run drawn as a dot."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=_DPI)
    for index, (values, name) in enumerate(((test_accuracy, "test accuracy"), (test_loss, "test loss")), start=1):
        axes = figure.add_subplot(1, 2, index)
        data = [v for v in _as_floats(values) if math.isfinite(v)]
        if data:
            axes.boxplot([data], widths=0.5, showmeans=True)
            jitter = np.random.default_rng(0).uniform(-0.08, 0.08, len(data))
            axes.scatter(1 + jitter, data, s=10, alpha=0.5, color="tab:blue", zorder=3)
        axes.set_xticks([1], [f"{len(data)} run{'s' if len(data) != 1 else ''}"])
        axes.set_title(name)
        axes.grid(alpha=0.3, axis="y")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_architecture(model: keras.Model, path: Path) -> Path | None:
    """The model's layers drawn with visualkeras; None (and a warning) if visualkeras cannot draw it."""
    try:
        import io

        import visualkeras

        from toonvision.fsutil import atomic_write_bytes

        for layer in model.layers:  # visualkeras 0.2 reads Keras 2's layer.output_shape
            if not hasattr(layer, "output_shape"):
                object.__setattr__(layer, "output_shape", tuple(layer.output.shape))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # its own deprecation notices
            image = visualkeras.layered_view(model, legend=True, spacing=20)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        atomic_write_bytes(Path(path), buffer.getvalue())
        return Path(path)
    except Exception as exc:  # visualkeras is a drawing aid; it must never stop a training
        logger.warning("could not draw the architecture of %s with visualkeras (%s: %s); skipped",
                       getattr(model, "name", "the model"), type(exc).__name__, exc)
        return None


def plot_tuning(
    objective: Sequence[float | None], path: Path, *, name: str, direction: str, title: str = ""
) -> Path:
    """The objective of each trial (dots; a failed trial is left out) and the best so far (a step line)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if direction not in ("min", "max"):
        raise ValueError(f"direction must be 'min' or 'max', got {direction!r}")
    values = _as_floats(objective)
    trials = range(len(values))  # keras-tuner numbers trials from 0
    best: list[float] = []
    for value in values:
        previous = best[-1] if best else math.nan
        if not math.isfinite(value):
            best.append(previous)
        elif not math.isfinite(previous):
            best.append(value)
        else:
            best.append(min(previous, value) if direction == "min" else max(previous, value))
    figure = Figure(figsize=(8, 4.5), dpi=_DPI)
    axes = figure.add_subplot(1, 1, 1)
    finite = [(t, v) for t, v in zip(trials, values, strict=True) if math.isfinite(v)]
    if finite:
        axes.scatter([t for t, _ in finite], [v for _, v in finite], color="tab:blue", zorder=3, label="trial")
        axes.step(list(trials), best, where="post", color="tab:orange", linewidth=2, label="best so far")
        axes.legend()
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("trial")
    axes.set_ylabel(f"{name} ({'lower' if direction == 'min' else 'higher'} is better)")
    axes.grid(alpha=0.3)
    axes.set_title(title or f"{name} per trial")
    figure.tight_layout()
    return _save(figure, path)


# -- data balance -------------------------------------------------------------------------------


def plot_label_counts(
    names: Sequence[str], counts: Sequence[int], path: Path, *, target: int | None = None,
    title: str = "Crops per label", xlabel: str = "label",
) -> Path:
    """Bars of crops per label (or class), the count on each bar, a target line and the average."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 0.32 * len(names) + 2.0), 5.5), dpi=_DPI)
    axes = figure.add_subplot(1, 1, 1)
    bars = axes.bar(range(len(names)), counts, color="tab:blue")
    axes.bar_label(bars, labels=[str(c) for c in counts], fontsize=8, padding=2)
    if counts:
        average = sum(counts) / len(counts)
        axes.axhline(average, color="tab:gray", linestyle=":", linewidth=1.5, label=f"average {average:.1f}")
    if target is not None:
        axes.axhline(target, color="tab:red", linestyle="--", linewidth=1.5, label=f"target {target}")
    axes.set_xticks(range(len(names)), names, rotation=90 if len(names) > 8 else 0, fontsize=8)
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.set_ymargin(0.12)  # room for the counts above the tallest bar
    axes.set_xlabel(xlabel)
    axes.set_ylabel("crops")
    axes.set_title(title)
    axes.grid(alpha=0.3, axis="y")
    if axes.lines:
        axes.legend(loc="upper right")
    figure.tight_layout()
    return _save(figure, path)


def plot_split_counts(
    names: Sequence[str], counts: Mapping[str, Sequence[int]], path: Path, *,
    title: str = "Crops per class and split",
) -> Path:
    """Stacked bars per class, one segment per split (train, validate, test), totals on top."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 0.45 * len(names) + 2.5), 5.5), dpi=_DPI)
    axes = figure.add_subplot(1, 1, 1)
    bottom = [0] * len(names)
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:purple")
    for (split, values), colour in zip(counts.items(), colours, strict=False):
        bars = axes.bar(range(len(names)), values, bottom=bottom, color=colour, label=split)
        axes.bar_label(bars, labels=[str(v) if v else "" for v in values], label_type="center", fontsize=7)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    totals = axes.bar(range(len(names)), [0] * len(names), bottom=bottom, color="none")
    axes.bar_label(totals, labels=[str(b) for b in bottom], fontsize=8, padding=2)
    axes.set_xticks(range(len(names)), names, rotation=90 if len(names) > 8 else 0, fontsize=8)
    axes.set_ylim(0, max(bottom, default=0) * 1.2 + 1)  # headroom for the totals and the legend
    axes.set_xlabel("class")
    axes.set_ylabel("crops")
    axes.set_title(title)
    axes.grid(alpha=0.3, axis="y")
    axes.legend(loc="upper right", ncol=len(counts), fontsize=8)
    figure.tight_layout()
    return _save(figure, path)


def plot_crop_sizes(
    widths: Sequence[int], heights: Sequence[int], path: Path, *, small: tuple[int, int] | None = None,
    title: str = "Crop sizes",
) -> Path:
    """Histograms of crop width and height; ``small`` (width, height) marks where crops lose detail."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.5), dpi=_DPI)
    for index, (values, name) in enumerate(((widths, "width"), (heights, "height")), start=1):
        axes = figure.add_subplot(1, 2, index)
        axes.hist(values, bins=min(40, max(5, len(set(values)))), color="tab:blue", edgecolor="white")
        if small is not None and values:
            limit = small[index - 1]
            below = sum(1 for v in values if v < limit)
            axes.axvline(limit, color="tab:red", linestyle="--", linewidth=1.5,
                         label=f"{below} crops ({below / len(values):.0%}) under {limit} px")
            axes.legend(loc="upper right")
        axes.set_xlabel(f"crop {name} (pixels)")
        axes.set_ylabel("crops")
        axes.set_title(f"{name} of {len(values)} crops")
        axes.grid(alpha=0.3, axis="y")
    figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


# -- helpers ------------------------------------------------------------------------------------


def _as_floats(values: Sequence[Any]) -> list[float]:
    return [math.nan if v is None else float(v) for v in values]


def _save(figure: Any, path: Path) -> Path:
    """Write the figure as PNG through a temp file and a rename (a kill leaves no half PNG)."""
    import io

    from toonvision.fsutil import atomic_write_bytes

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


# -- evaluation and explanation (toonvision.evaluate, toonvision.explain, toonvision.compare) -----


def plot_confusion_matrix(
    names: Sequence[str], counts: Any, normalised: Any, path: Path, title: str = ""
) -> Path:
    """Two panels: raw counts and row-normalised shares; actual classes down, predicted across."""
    import numpy as np
    from matplotlib.figure import Figure

    counts, normalised = np.asarray(counts), np.asarray(normalised, dtype=float)
    n = len(names)
    side = max(4.5, 0.42 * n + 2.5)
    figure = Figure(figsize=(2 * side + 1.5, side + 0.8), dpi=_DPI)
    font = 9 if n <= 10 else 7 if n <= 20 else 5
    rotation = 90 if n > 6 else 30 if max(map(len, names), default=0) > 6 else 0  # long names would overlap
    panels = ((counts, "counts", "d"), (normalised, "share of each actual class", ".2f"))
    for index, (matrix, name, fmt) in enumerate(panels, start=1):
        axes = figure.add_subplot(1, 2, index)
        top = matrix.max() if matrix.size and matrix.max() > 0 else 1
        image = axes.imshow(matrix, cmap="Blues", vmin=0, vmax=top)
        figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                if n > 20 and value == 0:
                    continue
                text = format(int(value), fmt) if fmt == "d" else format(float(value), fmt)
                axes.text(j, i, text, ha="center", va="center", fontsize=font,
                          color="white" if value > top / 2 else "black")
        axes.set_xticks(range(n), names, rotation=rotation, ha="right" if rotation == 30 else "center",
                        rotation_mode="anchor" if rotation == 30 else "default", fontsize=font + 1)
        axes.set_yticks(range(n), names, fontsize=font + 1)
        axes.set_xlabel("predicted")
        axes.set_ylabel("actual")
        axes.set_title(name)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_prediction_grid(images: Sequence[Any], titles: Sequence[str], path: Path, title: str = "") -> Path:
    """Images (H x W x 3 uint8 arrays) in a grid, each with its own title (e.g. a wrong prediction)."""
    from matplotlib.figure import Figure

    count = max(1, len(images))
    columns = min(8, count)
    rows = math.ceil(count / columns)
    figure = Figure(figsize=(2.1 * columns, 3.4 * rows + 0.6), dpi=_DPI)
    for index, (image, caption) in enumerate(zip(images, titles, strict=True), start=1):
        axes = figure.add_subplot(rows, columns, index)
        axes.imshow(image)
        axes.set_title(caption, fontsize=7)
        axes.axis("off")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_gradcam(
    image: Any, heatmaps: Sequence[Any], titles: Sequence[str], path: Path, title: str = "", alpha: float = 0.45
) -> Path:
    """The image, then one Grad-CAM overlay per heatmap (values in [0, 1], the image's size).

    Overlays lie on a grey copy of the image, so the heatmap's colours are not mixed with the image's.
    """
    import numpy as np
    from matplotlib.figure import Figure

    grey = np.asarray(image, dtype=float)[..., :3] @ np.array([0.299, 0.587, 0.114])
    panels = len(heatmaps) + 1
    columns = min(panels, 6)
    rows = math.ceil(panels / columns)
    height, width = image.shape[:2]
    cell_w = 2.4
    cell_h = min(6.0, max(1.6, cell_w * height / max(width, 1))) + 0.5
    figure = Figure(figsize=(cell_w * columns, cell_h * rows + 0.6), dpi=_DPI)
    axes = figure.add_subplot(rows, columns, 1)
    axes.imshow(image)
    axes.set_title("image", fontsize=8)
    axes.axis("off")
    for index, (heatmap, caption) in enumerate(zip(heatmaps, titles, strict=True), start=2):
        axes = figure.add_subplot(rows, columns, index)
        axes.imshow(grey, cmap="gray", vmin=0, vmax=255)
        axes.imshow(heatmap, cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
        axes.set_title(caption, fontsize=8)
        axes.axis("off")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path)


def plot_compare_curves(
    curves: Mapping[str, Mapping[str, Sequence[float | None]]], path: Path, title: str = ""
) -> Path:
    """Mean training curves of several models on one figure: accuracy and loss, train solid, validation dashed."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.5), dpi=_DPI)
    colours = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
    for index, name in enumerate(("accuracy", "loss"), start=1):
        axes = figure.add_subplot(1, 2, index)
        for number, (model, history) in enumerate(curves.items()):
            colour = colours[number % len(colours)]
            for key, style, label in ((name, "-", "train"), (f"val_{name}", "--", "validation")):
                values = _as_floats(history.get(key, ()))
                if values:
                    axes.plot(range(1, len(values) + 1), values, style, color=colour, linewidth=2,
                              label=f"{model} {label}")
        axes.set_xlabel("epoch")
        axes.set_ylabel(name)
        axes.set_title(f"{name} (mean over runs)")
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend(fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_compare_boxplots(
    test_accuracy: Mapping[str, Sequence[float]], test_loss: Mapping[str, Sequence[float]], path: Path,
    title: str = "",
) -> Path:
    """Box plots of test accuracy and test loss, one box per model, every run drawn as a dot."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(8.0, 2.2 * len(test_accuracy) + 4), 4.8), dpi=_DPI)
    for index, (values, name) in enumerate(((test_accuracy, "test accuracy"), (test_loss, "test loss")), start=1):
        axes = figure.add_subplot(1, 2, index)
        models = list(values)
        data = [[v for v in _as_floats(values[m]) if math.isfinite(v)] for m in models]
        positions = [i for i, d in enumerate(data, start=1) if d]
        if positions:
            axes.boxplot([data[i - 1] for i in positions], positions=positions, widths=0.5, showmeans=True)
        rng = np.random.default_rng(0)
        for position, d in zip(range(1, len(data) + 1), data, strict=True):
            if d:
                axes.scatter(position + rng.uniform(-0.08, 0.08, len(d)), d, s=10, alpha=0.5, zorder=3)
        axes.set_xticks(range(1, len(models) + 1), [f"{m}\n({len(d)} runs)" for m, d in zip(models, data, strict=True)])
        axes.set_xlim(0.4, len(models) + 0.6)
        axes.set_title(name)
        axes.grid(alpha=0.3, axis="y")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


# -- cross-validation and audit (toonvision.cv, toonvision.audit) ---------------------------------


def plot_cv_folds(accuracy: Sequence[float], macro_f1: Sequence[float], path: Path, title: str = "") -> Path:
    """Box plots of the held-out accuracy and macro-F1 over folds, every fold drawn as a dot."""
    import numpy as np
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=_DPI)
    for index, (values, name) in enumerate(((accuracy, "accuracy"), (macro_f1, "macro-F1")), start=1):
        axes = figure.add_subplot(1, 2, index)
        data = [v for v in _as_floats(values) if math.isfinite(v)]
        if data:
            axes.boxplot([data], widths=0.5, showmeans=True)
            jitter = np.random.default_rng(0).uniform(-0.08, 0.08, len(data))
            axes.scatter(1 + jitter, data, s=14, alpha=0.6, color="tab:blue", zorder=3)
        axes.set_xticks([1], [f"{len(data)} fold{'s' if len(data) != 1 else ''}"])
        axes.set_title(f"held-out {name}")
        axes.grid(alpha=0.3, axis="y")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return _save(figure, path)


def plot_label_issues(
    images: Sequence[Any], given: Sequence[str], suggested: Sequence[str], scores: Sequence[float], path: Path,
    title: str = "",
) -> Path:
    """The top label-issue suspects (H x W x 3 uint8 crops), each captioned with its given and suggested label."""
    if not len(images) == len(given) == len(suggested) == len(scores):
        raise ValueError(f"{len(images)} crops need as many labels, suggestions and scores, got "
                         f"{len(given)}, {len(suggested)} and {len(scores)}")
    titles = [f"given: {g}\nsuggested: {s}\nscore {score:.3f}"
              for g, s, score in zip(given, suggested, scores, strict=True)]
    return plot_prediction_grid(images, titles, path, title)
