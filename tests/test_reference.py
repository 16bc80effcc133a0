"""reference: colour-histogram + thumbnail features and a balanced logistic regression, on tiny data."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn")
tf = pytest.importorskip("tensorflow")

from toonvision.cache import CropCache  # noqa: E402
from toonvision.decode import resize  # noqa: E402
from toonvision.reference import (  # noqa: E402
    FEATURES,
    HSV_BINS,
    RGB_BINS,
    THUMBNAIL,
    FeatureTable,
    features,
    fit,
    probabilities,
    reference_run,
    score,
)
from toonvision.split import plan_split  # noqa: E402
from toonvision.tasks import get_task  # noqa: E402

from helpers import write_colour_pool  # noqa: E402

JOINT = RGB_BINS ** 3


def test_features_are_colour_histograms_and_a_grey_thumbnail():
    red = np.zeros((30, 10, 3), np.uint8)
    red[..., 0] = 255
    half = red.copy()
    half[15:] = (0, 0, 255)  # bottom half blue
    rows = features([red, half])
    assert rows.shape == (2, FEATURES) and rows.dtype == np.float32
    red_cell = (RGB_BINS - 1) * RGB_BINS * RGB_BINS  # r in the top bin, g and b in the bottom one
    blue_cell = RGB_BINS - 1
    assert rows[0, red_cell] == 1.0 and rows[0, :JOINT].sum() == pytest.approx(1.0)
    assert rows[1, red_cell] == pytest.approx(0.5) and rows[1, blue_cell] == pytest.approx(0.5)
    hue = rows[:, JOINT:JOINT + HSV_BINS[0]]
    assert hue[0, 0] == 1.0 and hue[1, 0] == pytest.approx(0.5)  # red is hue 0; blue is 2/3 of the circle
    assert hue[1, int(170 * HSV_BINS[0] / 256)] == pytest.approx(0.5)
    grey = rows[:, -THUMBNAIL[0] * THUMBNAIL[1]:].reshape(2, *THUMBNAIL)
    assert grey[0] == pytest.approx(0.299, abs=1e-5)  # luma of pure red
    assert grey[1, 0] == pytest.approx(0.299, abs=1e-5) and grey[1, -1] == pytest.approx(0.114, abs=1e-5)


def test_the_thumbnail_is_resized_as_the_model_input_is():
    tall = np.full((40, 8, 3), 255, np.uint8)
    stretched, padded = features([tall])[0], features([tall], "pad")[0]
    assert np.array_equal(stretched[:-64], padded[:-64])  # the histograms do not depend on the resize
    expected = resize(tall, THUMBNAIL, mode="pad").numpy()[..., 0] / 255.0
    np.testing.assert_allclose(padded[-64:].reshape(THUMBNAIL), expected, atol=1e-6)
    assert stretched[-64:].min() == pytest.approx(1.0) and padded[-64:].min() == 0.0  # zero bands at the sides


def test_fit_and_score_separate_colours():
    rng = np.random.default_rng(0)
    colours = ((220, 40, 40), (40, 70, 220), (40, 190, 60))
    images = [np.clip(np.array(c) + rng.integers(-30, 31, (12, 9, 3)), 0, 255).astype(np.uint8)
              for c in colours for _ in range(8)]
    y = np.repeat(np.arange(3), 8)
    x = features(images)
    model = fit(x[::2], y[::2], seed=1)
    result = score(model, x[1::2], y[1::2], ("r", "b", "g"))
    assert result.accuracy == 1.0 and result.macro_f1 == 1.0 and 0.0 <= result.loss < 0.5
    p = probabilities(model, x[1::2], 3)
    assert p.shape == (12, 3) and np.allclose(p.sum(axis=1), 1.0)
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit(x[:8], y[:8])


def test_a_class_the_model_never_saw_gets_probability_zero():
    x = features([np.full((5, 5, 3), v, np.uint8) for v in (10, 20, 200, 210)])
    model = fit(x, [0, 0, 2, 2])
    p = probabilities(model, x, 3)
    assert (p[:, 1] == 0).all() and np.allclose(p.sum(axis=1), 1.0)


def test_reference_run_fits_on_train_and_scores_every_split(tmp_path):
    layout, records = write_colour_pool(tmp_path / "img", {"cog_bb_a": 10, "cog_lb_b": 10, "cog_cb_c": 10})
    plan = plan_split(records, get_task("suit"), (0.6, 0.2, 0.2), seed=3)
    table = FeatureTable()
    record, scores = reference_run(plan, layout.pool, 2, 9, CropCache(), table)
    assert (record.run, record.seed, record.epochs) == (2, 9, 0)
    assert set(scores) == {"train", "validate", "test"}
    assert record.test_accuracy == scores["test"].accuracy == 1.0 and scores["test"].macro_f1 == 1.0
    assert record.val_loss == scores["validate"].loss and record.train_accuracy == 1.0
    assert len(table._rows) == 30  # every crop's features, computed once for the next runs
