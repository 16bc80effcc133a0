"""What to synthesise: :class:`SynthConfig` with its checks, label weight overrides, and file names."""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Sequence
from dataclasses import dataclass

from toonvision.constants import (
    DEFAULT_SYNTH_COUNT,
    DEFAULT_SYNTH_SIZE,
    DEFAULT_TOON_SHARE,
    HW,
)
from toonvision.errors import UsageError
from toonvision.synth.specs import COG_LABELS, DEFAULT_WEIGHTS, LABELS, TOON_LABELS

DEFAULT_COUNT = DEFAULT_SYNTH_COUNT
DEFAULT_SIZE = DEFAULT_SYNTH_SIZE  # HW(600, 800): the original screenshots' size
DEFAULT_ENTITIES = (1, 6)  # Cogs and Toons per scene, inclusive
MIN_SIZE = HW(48, 64)
MAX_SIZE = HW(4096, 4096)
MAX_ENTITIES = 40
NAME_PREFIX = "synth"


@dataclass(frozen=True)
class SynthConfig:
    """What to synthesise. ``weights`` are relative within each group; ``toon_share`` splits the groups."""

    count: int = DEFAULT_COUNT
    seed: int = 0
    size: HW = DEFAULT_SIZE
    toon_share: float = DEFAULT_TOON_SHARE
    weights: tuple[tuple[str, float], ...] = DEFAULT_WEIGHTS
    entities: tuple[int, int] = DEFAULT_ENTITIES

    def __post_init__(self) -> None:
        def bad(what: str, received: object, allowed: str) -> UsageError:
            return UsageError(f"synth: {what} is {received!r}; {allowed}")

        if not isinstance(self.count, int) or self.count < 1:
            raise bad("count", self.count, "use a whole number of screenshots, at least 1")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", self.seed, "use a whole number 0 or above")
        if not isinstance(self.size, HW):
            raise bad("size", self.size, "give an HW(height, width), so the order cannot be mistaken")
        if not (MIN_SIZE.height <= self.size.height <= MAX_SIZE.height
                and MIN_SIZE.width <= self.size.width <= MAX_SIZE.width):
            raise bad("size", self.size.as_text(), f"use {MIN_SIZE.as_text()} up to {MAX_SIZE.as_text()} "
                      "(HEIGHTxWIDTH)")
        low, high = self.entities
        if not 1 <= low <= high <= MAX_ENTITIES:
            raise bad("entities per scene", f"{low}..{high}", f"use 1 <= min <= max <= {MAX_ENTITIES}")
        if not 0.0 <= self.toon_share <= 1.0:
            raise bad("toon share", self.toon_share, "use a fraction from 0 (only Cogs) to 1 (only Toons)")
        weights = dict(self.weights)
        unknown = sorted(set(weights) - set(LABELS))
        if unknown:
            raise bad("weights", unknown[0], f"synth draws only the {len(LABELS)} ToonVision labels, "
                      "such as cog_bb_flunky and toon_cat")
        if any(not math.isfinite(w) or w < 0 for w in weights.values()):
            raise bad("weights", self.weights, "use weights of 0 or more")
        groups = (("Cog", COG_LABELS, 1 - self.toon_share), ("Toon", TOON_LABELS, self.toon_share))
        for group, labels, share in groups:
            if share > 0 and not any(weights.get(label, 0) > 0 for label in labels):
                raise bad(f"{group} weights", "all 0", f"give some {group} a weight above 0, or set the "
                          f"toon share to {0 if group == 'Toon' else 1}")

    @property
    def width(self) -> int:
        return self.size.width

    @property
    def height(self) -> int:
        return self.size.height

    def probabilities(self) -> dict[str, float]:
        """The chance of each label per entity, in LABELS order (labels of weight 0 left out)."""
        weights = dict(self.weights)
        result: dict[str, float] = {}
        for labels, share in ((COG_LABELS, 1 - self.toon_share), (TOON_LABELS, self.toon_share)):
            total = sum(weights.get(label, 0.0) for label in labels)
            for label in labels:
                if share > 0 and weights.get(label, 0.0) > 0:
                    result[label] = share * weights[label] / total
        return result


def with_weights(config: SynthConfig, overrides: Sequence[tuple[str, float]]) -> SynthConfig:
    """Set the weight of every label matching each glob pattern (``cog_lb_*``, ``toon_horse``), in order."""
    weights = dict(config.weights)
    for pattern, weight in overrides:
        matched = fnmatch.filter(LABELS, pattern.strip().lower())
        if not matched:
            raise UsageError(f"synth: weight pattern {pattern!r} matches none of the {len(LABELS)} ToonVision "
                             "labels; use a label such as toon_horse or a pattern such as 'cog_lb_*'")
        for label in matched:
            weights[label] = weight
    return dataclasses.replace(config, weights=tuple((label, weights.get(label, 0.0)) for label in LABELS))



def scene_name(seed: int, index: int) -> str:
    """File stem of scene ``index`` of ``seed``: ``synth_<seed>_<index>``."""
    return f"{NAME_PREFIX}_{seed}_{index:06d}"
