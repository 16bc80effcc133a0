"""Synthetic ToonTown street screenshots with labelImg XML: demo, test and benchmark data.

The original ToonVision screenshots were never published, so ``toonvision synth`` draws its own::

    synth_<seed>_000000.png    an 800x600 street: sky, buildings, paved ground, Cogs and Toons,
                               each with a nametag floating above it (outside its box)
    synth_<seed>_000000.xml    Pascal VOC exactly as labelImg writes it, one <object> per entity
    ...

Decide first, then draw: :func:`plan_scene` makes every random choice of one scene (street,
entities, poses, places, nametags, lighting) without touching a pixel; :func:`render_plan`
draws a plan; :func:`render_scene` does both; :func:`synthesize` writes the files. Scene ``i``
of seed ``s`` uses its own generator ``np.random.default_rng([s, i])``, so scenes are
independent (any order, any process) and the same seed always gives the same bytes.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import fnmatch
import functools
import io
import logging
import math
import multiprocessing
import os
import random
import struct
import zlib
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from toonvision.constants import IMAGE_SUFFIXES, SUITS
from toonvision.errors import PoolLockedError, UsageError
from toonvision.fsutil import atomic_write_bytes, die_with_parent
from toonvision.voc import Annotation, Box, ImageSize, VocObject, format_annotation

logger = logging.getLogger(__name__)
_T = TypeVar("_T")

RGB = tuple[int, int, int]

DEFAULT_COUNT = 100
DEFAULT_SIZE = (800, 600)  # width, height: the original screenshots' size
DEFAULT_ENTITIES = (1, 6)  # Cogs and Toons per scene, inclusive
DEFAULT_TOON_SHARE = 148 / 674  # the original dataset: 526 Cogs and 148 Toons
MIN_SIZE = (64, 48)
MAX_SIZE = (4096, 4096)
MAX_ENTITIES = 40
PARALLEL_MIN_SCENES = 32  # below this, starting worker processes costs more than it saves
NAME_PREFIX = "synth"

_RARE_COG_WEIGHT = 0.3  # the two highest Cogs of each suit were rare in the original data
_PLACEMENT_TRIES = 40
_MAX_OCCLUDED = 0.35  # at most this share of a box may lie behind boxes in front of it
_SUPERSAMPLE = 2  # entities are drawn at twice the size and reduced: smooth edges
_BACKGROUND_VARIANTS = 4  # cached backdrops per street style
_BACKDROP_PAN = 0.25  # backdrops are this much wider than the frame; each scene pans over them
_STYLE_SEED = 2_021_1103  # backdrops and the grain texture do not depend on the scene seed
_GRAIN_SEED = 7
_GRAIN_MARGIN = 64
_WRITER_THREADS = 4  # fsync waits of several files overlap each other and the rendering
_WRITE_BACKLOG = 16  # rendered scenes waiting to be written, at most


# --------------------------------------------------------------------------------------------
# Labels and what each one looks like
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _CogSpec:
    """How one Cog name looks: body type, height, and head shape, size, colour and accessory."""

    display: str  # nametag text, e.g. "Cold Caller"
    body: str  # "A" tall and slim, "B" medium, "C" short and stout
    height: float  # relative to the screen height at the nearest distance
    head: str  # a shape of _shape_points
    head_size: tuple[float, float]  # width, height in body units
    head_color: RGB
    extra: str = ""  # glasses, hair, tophat, wig, beak, fin, grin, visor, two_tone
    extra_color: RGB = (35, 30, 30)


_COGS: dict[str, tuple[tuple[str, _CogSpec], ...]] = {
    "bb": (
        ("flunky", _CogSpec("Flunky", "C", 0.78, "round", (0.30, 0.30), (236, 192, 170),
                            "glasses", (40, 40, 40))),
        ("pencilpusher", _CogSpec("Pencil Pusher", "B", 0.92, "oval", (0.24, 0.33), (232, 214, 186),
                                  "hair", (70, 50, 35))),
        ("yesman", _CogSpec("Yesman", "A", 1.02, "egg", (0.26, 0.32), (214, 168, 118), "grin")),
        ("micromanager", _CogSpec("Micromanager", "C", 0.62, "round", (0.40, 0.38), (246, 206, 182),
                                  "hair", (205, 110, 50))),
        ("downsizer", _CogSpec("Downsizer", "B", 0.96, "square", (0.30, 0.27), (160, 160, 168))),
        ("headhunter", _CogSpec("Head Hunter", "A", 1.10, "wide", (0.34, 0.26), (190, 140, 90),
                                "hair", (25, 22, 22))),
        ("corporateraider", _CogSpec("Corporate Raider", "C", 0.86, "trapezoid", (0.40, 0.24), (132, 172, 92),
                                     "grin")),
        ("thebigcheese", _CogSpec("The Big Cheese", "A", 1.16, "round", (0.32, 0.31), (236, 204, 108),
                                  "tophat", (92, 60, 36))),
    ),
    "lb": (
        ("bottomfeeder", _CogSpec("Bottom Feeder", "C", 0.74, "egg", (0.30, 0.34), (150, 176, 140))),
        ("bloodsucker", _CogSpec("Bloodsucker", "B", 1.00, "oval", (0.22, 0.36), (236, 236, 240),
                                 "hair", (20, 20, 24))),
        ("doubletalker", _CogSpec("Double Talker", "A", 1.06, "oval", (0.27, 0.33), (238, 238, 238),
                                  "two_tone", (150, 150, 160))),
        ("ambulancechaser", _CogSpec("Ambulance Chaser", "B", 0.95, "round", (0.29, 0.29), (222, 142, 130),
                                     "glasses", (30, 30, 30))),
        ("backstabber", _CogSpec("Back Stabber", "A", 1.08, "pointy", (0.24, 0.38), (170, 170, 182))),
        ("spindoctor", _CogSpec("Spin Doctor", "B", 0.98, "square", (0.26, 0.33), (152, 120, 172),
                                "hair", (240, 240, 240))),
        ("legaleagle", _CogSpec("Legal Eagle", "A", 1.14, "round", (0.30, 0.31), (122, 82, 50),
                                "beak", (240, 200, 40))),
        ("bigwig", _CogSpec("Big Wig", "A", 1.18, "round", (0.27, 0.28), (236, 196, 180),
                            "wig", (246, 246, 246))),
    ),
    "cb": (
        ("shortchange", _CogSpec("Short Change", "C", 0.70, "round", (0.26, 0.26), (226, 186, 150))),
        ("pennypincher", _CogSpec("Penny Pincher", "A", 0.98, "oval", (0.23, 0.30), (240, 222, 200),
                                  "glasses", (60, 45, 20))),
        ("tightwad", _CogSpec("Tightwad", "C", 0.82, "square", (0.33, 0.30), (220, 200, 140),
                              "hair", (110, 70, 30))),
        ("beancounter", _CogSpec("Bean Counter", "B", 0.95, "bean", (0.30, 0.33), (172, 120, 72))),
        ("numbercruncher", _CogSpec("Number Cruncher", "A", 1.08, "square", (0.36, 0.36), (190, 190, 196),
                                    "visor", (70, 110, 80))),
        ("moneybags", _CogSpec("Money Bags", "C", 0.88, "dome", (0.36, 0.33), (200, 180, 120), "grin")),
        ("loanshark", _CogSpec("Loan Shark", "B", 1.04, "wide", (0.33, 0.30), (130, 140, 166), "fin")),
        ("robberbaron", _CogSpec("Robber Baron", "A", 1.16, "oval", (0.25, 0.31), (236, 190, 176),
                                 "tophat", (25, 25, 28))),
    ),
    "sb": (
        ("coldcaller", _CogSpec("Cold Caller", "C", 0.76, "square", (0.30, 0.30), (60, 92, 212))),
        ("telemarketer", _CogSpec("Telemarketer", "B", 0.95, "pointy", (0.22, 0.36), (236, 214, 196))),
        ("namedropper", _CogSpec("Name Dropper", "A", 1.04, "round", (0.28, 0.30), (242, 190, 180),
                                 "hair", (120, 70, 40))),
        ("gladhander", _CogSpec("Glad Hander", "C", 0.84, "wide", (0.38, 0.30), (242, 200, 168), "grin")),
        ("movershaker", _CogSpec("Mover & Shaker", "B", 0.98, "trapezoid", (0.30, 0.30), (152, 100, 70))),
        ("twoface", _CogSpec("Two-Face", "A", 1.06, "square", (0.30, 0.33), (240, 196, 186),
                             "two_tone", (140, 140, 150))),
        ("themingler", _CogSpec("The Mingler", "A", 1.10, "oval", (0.25, 0.33), (230, 210, 200),
                                "hair", (30, 24, 20))),
        ("mrhollywood", _CogSpec("Mr. Hollywood", "A", 1.18, "oval", (0.24, 0.35), (246, 240, 236), "grin")),
    ),
}

_SUIT_COLORS: dict[str, RGB] = {"bb": (118, 84, 58), "lb": (64, 74, 118), "cb": (86, 122, 86), "sb": (114, 42, 52)}
_HAND_COLORS: dict[str, RGB] = {"bb": (232, 204, 172), "lb": (204, 210, 238), "cb": (208, 228, 200),
                                "sb": (238, 206, 216)}
_TIE_COLORS: dict[str, RGB] = {"bb": (150, 40, 40), "lb": (40, 40, 70), "cb": (210, 190, 90), "sb": (60, 20, 25)}

_ANIMALS = ("bear", "cat", "crocodile", "deer", "dog", "duck", "horse", "monkey", "mouse", "pig", "rabbit")

COG_LABELS: tuple[str, ...] = tuple(f"cog_{suit}_{name}" for suit, names in _COGS.items() for name, _ in names)
TOON_LABELS: tuple[str, ...] = tuple(f"toon_{animal}" for animal in _ANIMALS)
LABELS: tuple[str, ...] = COG_LABELS + TOON_LABELS
"""The 43 labels of the original dataset, in the order of its predefined_classes.txt."""

_COG_SPECS: dict[str, _CogSpec] = {
    f"cog_{suit}_{name}": spec for suit, names in _COGS.items() for name, spec in names}
_TOON_WEIGHTS = {"cat": 3.0, "dog": 1.5, "duck": 1.2, "mouse": 1.2, "horse": 0.35}
DEFAULT_WEIGHTS: tuple[tuple[str, float], ...] = tuple(
    [(label, _RARE_COG_WEIGHT if i % 8 >= 6 else 1.0) for i, label in enumerate(COG_LABELS)]
    + [(f"toon_{animal}", _TOON_WEIGHTS.get(animal, 1.0)) for animal in _ANIMALS]
)
"""Relative weight of each label within its group (Cogs among Cogs, Toons among Toons)."""


# --------------------------------------------------------------------------------------------
# Configuration, plans and results
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthConfig:
    """What to synthesise. ``weights`` are relative within each group; ``toon_share`` splits the groups."""

    count: int = DEFAULT_COUNT
    seed: int = 0
    size: tuple[int, int] = DEFAULT_SIZE
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
        width, height = self.size
        if not (MIN_SIZE[0] <= width <= MAX_SIZE[0] and MIN_SIZE[1] <= height <= MAX_SIZE[1]):
            raise bad("size", f"{width}x{height}", f"use {MIN_SIZE[0]}x{MIN_SIZE[1]} up to "
                      f"{MAX_SIZE[0]}x{MAX_SIZE[1]}")
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
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

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


def parse_size(text: str) -> tuple[int, int]:
    """``"800x600"`` -> (800, 600); ValueError with the reason otherwise."""
    parts = text.strip().lower().split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise ValueError(f"{text!r} is not WIDTHxHEIGHT, e.g. 800x600")
    width, height = (int(part) for part in parts)
    if not (MIN_SIZE[0] <= width <= MAX_SIZE[0] and MIN_SIZE[1] <= height <= MAX_SIZE[1]):
        raise ValueError(f"{width}x{height} is outside {MIN_SIZE[0]}x{MIN_SIZE[1]} .. {MAX_SIZE[0]}x{MAX_SIZE[1]}")
    return width, height


def scene_name(seed: int, index: int) -> str:
    """File stem of scene ``index`` of ``seed``: ``synth_<seed>_<index>``."""
    return f"{NAME_PREFIX}_{seed}_{index:06d}"


@dataclass(frozen=True)
class PlannedEntity:
    """One Cog or Toon of a plan: its label, where it stands and where its nametag floats."""

    label: str
    pose: str  # front, side or back
    box: tuple[int, int, int, int]  # left, top, right, bottom (exclusive), before occlusion
    nametag: tuple[int, int, int, int]
    foot: int  # the row it stands on: larger is nearer, drawn later
    look: "_CogLook | _ToonLook"
    blur: float  # Gaussian radius in pixels: focus and motion
    noise: float  # standard deviation of the grain on it, in grey levels
    grain_offset: tuple[int, int]  # where its grain is cut from the shared grain texture


@dataclass(frozen=True)
class ScenePlan:
    """Every random choice of one scene; :func:`render_plan` turns it into pixels."""

    name: str
    size: tuple[int, int]
    style: str
    variant: int
    pan: int
    flip: bool
    entities: tuple[PlannedEntity, ...]  # back to front
    effects: "_Effects"

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(entity.label for entity in self.entities)


@dataclass(frozen=True)
class Scene:
    """A rendered screenshot, its annotation, and the nametag rectangles (never inside a box)."""

    image: Image.Image
    annotation: Annotation
    nametags: tuple[Box, ...]


@dataclass(frozen=True)
class SynthResult:
    """What :func:`synthesize` did."""

    out_dir: Path
    written: int
    present: int  # already there with the same pixels; left untouched
    label_counts: tuple[tuple[str, int], ...]

    @property
    def screenshots(self) -> int:
        return self.written + self.present

    @property
    def objects(self) -> int:
        return sum(n for _, n in self.label_counts)

    def group_counts(self) -> dict[str, int]:
        """Objects per group and suit: ``cog``, ``toon``, ``cog_bb`` .. ``cog_sb``."""
        counts: dict[str, int] = {}
        for label, n in self.label_counts:
            keys = [label.split("_")[0]] + (["_".join(label.split("_")[:2])] if label.startswith("cog_") else [])
            for key in keys:
                counts[key] = counts.get(key, 0) + n
        return counts

    def summary(self) -> str:
        groups = self.group_counts()
        suits = ", ".join(f"{suit} {groups.get(f'cog_{suit}', 0)}" for suit in SUITS)
        done = f"{self.written} written" + (f", {self.present} already there" if self.present else "")
        return (f"synth: {self.screenshots} screenshots ({done}) with {self.objects} objects: "
                f"{groups.get('cog', 0)} Cogs ({suits}), {groups.get('toon', 0)} Toons; in {self.out_dir}")


# --------------------------------------------------------------------------------------------
# Planning: every random choice, no pixels
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _CogLook:
    label: str
    spec: _CogSpec
    suit: str
    pose: str
    mirror: bool
    suit_color: RGB
    head_color: RGB
    level: int

    def draw(self, pen: "_Pen") -> None:
        _draw_cog(pen, self)

    def nametag(self) -> tuple[tuple[str, ...], RGB]:
        return (self.spec.display, SUITS[self.suit], f"Level {self.level}"), (20, 20, 20)


@dataclass(frozen=True)
class _ToonLook:
    label: str
    animal: str
    pose: str
    mirror: bool
    fur: RGB
    shirt: RGB
    bottoms: RGB
    shoes: RGB
    stripe: RGB | None
    skirt: bool
    leg: float
    torso: float
    head: float
    name: str
    name_color: RGB

    def draw(self, pen: "_Pen") -> None:
        _draw_toon(pen, self)

    def nametag(self) -> tuple[tuple[str, ...], RGB]:
        return (self.name,), self.name_color


@dataclass(frozen=True)
class _Effects:
    """Whole-frame camera effects: lighting and JPEG compression (entities get their own blur and grain)."""

    gains: tuple[float, float, float]
    gamma: float
    shade: float  # strength of the side light on entities
    light_from_left: bool
    jpeg_quality: int  # 0 = no JPEG round trip


_FUR = ((250, 250, 250), (242, 206, 176), (238, 56, 56), (226, 98, 92), (166, 52, 62), (160, 82, 46),
        (150, 106, 72), (206, 156, 100), (236, 126, 104), (250, 150, 52), (250, 230, 92), (250, 240, 190),
        (220, 230, 64), (150, 220, 82), (82, 180, 130), (72, 160, 72), (142, 200, 246), (84, 210, 210),
        (62, 112, 222), (142, 142, 232), (62, 72, 182), (102, 100, 172), (152, 82, 202), (202, 162, 232),
        (246, 150, 200), (172, 92, 152), (52, 52, 58), (152, 152, 158))
_SHOES = ((40, 30, 25), (120, 70, 40), (240, 240, 240), (200, 40, 40), (40, 60, 150), (230, 190, 60))
_NAME_COLORS = ((30, 60, 200), (20, 130, 40), (200, 90, 20), (150, 30, 150), (190, 30, 40))
_NAME_PARTS = (("Lucky", "Captain", "Flippy", "Sparkle", "Bumpy", "Doctor", "Princess", "Sir", "Little",
                "Daffy", "Good Ol'", "Super", "Crazy", "Baron", "Lady", "Jumpin'"),
               ("Ducky", "Sparklepants", "Wigglebee", "McFluffy", "Noodle", "Jellybean", "Twinkle",
                "Biscuit", "Fuzzbutt", "Moonbeam", "Pickles", "Zoom", "Sprocket", "Gizmo", "Bubbles"))


def plan_scene(config: SynthConfig, index: int) -> ScenePlan:
    """Choose everything about scene ``index``: deterministic for (config, index), no pixels drawn."""
    rng = np.random.default_rng([config.seed, index])
    width, height = config.size
    style = _STYLE_NAMES[int(rng.integers(len(_STYLE_NAMES)))]
    variant = int(rng.integers(_BACKGROUND_VARIANTS))
    backdrop_width = _backdrop_width(width)
    pan = int(rng.integers(backdrop_width - width + 1))
    flip = bool(rng.random() < 0.5)
    horizon = _horizon(style, variant, height)
    probabilities = config.probabilities()
    labels = list(probabilities)
    p = np.array([probabilities[label] for label in labels])
    p /= p.sum()
    wanted = int(rng.integers(config.entities[0], config.entities[1] + 1))
    placed: list[PlannedEntity] = []
    for _ in range(wanted):
        label = labels[int(rng.choice(len(labels), p=p))]
        look = _choose_look(label, rng)
        entity = _place(look, rng, width, height, horizon, placed)
        if entity is None:
            logger.debug("%s: no room for one more %s; left out", scene_name(config.seed, index), label)
        else:
            placed.append(entity)
    placed.sort(key=lambda e: e.foot)
    return ScenePlan(
        name=scene_name(config.seed, index),
        size=(width, height),
        style=style,
        variant=variant,
        pan=pan,
        flip=flip,
        entities=tuple(placed),
        effects=_choose_effects(rng),
    )


def _choose_look(label: str, rng: np.random.Generator) -> _CogLook | _ToonLook:
    pose = ("front", "side", "back")[int(rng.choice(3, p=(0.5, 0.35, 0.15)))]
    mirror = bool(rng.random() < 0.5)
    if label in _COG_SPECS:
        spec = _COG_SPECS[label]
        suit = label.split("_")[1]
        tier = [name for name, _ in _COGS[suit]].index(label.split("_", 2)[2]) + 1
        return _CogLook(label, spec, suit, pose, mirror, suit_color=_jitter(rng, _SUIT_COLORS[suit], 16),
                        head_color=_jitter(rng, spec.head_color, 10), level=tier + int(rng.integers(5)))
    first, last = _NAME_PARTS
    name = f"{first[int(rng.integers(len(first)))]} {last[int(rng.integers(len(last)))]}"
    shirt, bottoms = _random_color(rng), _random_color(rng)
    return _ToonLook(
        label=label, animal=label.split("_", 1)[1], pose=pose, mirror=mirror,
        fur=_jitter(rng, _FUR[int(rng.integers(len(_FUR)))], 8),
        shirt=shirt, bottoms=bottoms, shoes=_SHOES[int(rng.integers(len(_SHOES)))],
        stripe=_random_color(rng) if rng.random() < 0.35 else None,
        skirt=bool(rng.random() < 0.35),
        leg=float(rng.uniform(0.20, 0.36)), torso=float(rng.uniform(0.24, 0.34)),
        head=float(rng.uniform(0.9, 1.15)), name=name,
        name_color=_NAME_COLORS[int(rng.integers(len(_NAME_COLORS)))],
    )


def _relative_height(look: _CogLook | _ToonLook) -> float:
    if isinstance(look, _CogLook):
        return look.spec.height
    return 0.62 + 0.35 * (look.leg - 0.20) + 0.1 * (look.head - 0.9)


def _font_size(entity_height: int, frame_height: int) -> int:
    """Nametags shrink with distance, but far more slowly than the entities do."""
    return max(5, round((5 + entity_height / 60) * min(1.0, frame_height / 600)))


def _place(look: _CogLook | _ToonLook, rng: np.random.Generator, width: int, height: int, horizon: int,
           placed: Sequence[PlannedEntity]) -> PlannedEntity | None:
    """Find a spot for ``look`` on the ground where its nametag covers no box and no box hides it."""
    left_u, right_u, top_u = _measure(look)
    relative = _relative_height(look)
    min_px = max(18, 0.06 * height)
    depth = height - horizon
    lowest = max(0.02, (min_px / (relative * height) - 0.06) / 0.70)
    for _ in range(_PLACEMENT_TRIES):
        near = lowest + (1 - lowest) * float(rng.random()) ** 1.8
        foot = min(height - 2, horizon + round(0.03 * height + near * depth))
        h = relative * height * (0.06 + 0.70 * near)
        scale = h / top_u
        w = (right_u - left_u) * scale
        if w + 4 >= width:
            continue
        cx = float(rng.uniform(2 - left_u * scale, width - 2 - right_u * scale))
        box = (math.floor(cx + left_u * scale), math.floor(foot - h), math.ceil(cx + right_u * scale), foot)
        tag = _nametag_rect(look, box, height)
        if tag is None or tag[0] < 1 or tag[2] > width - 1:
            continue
        if not _fits(box, tag, foot, placed):
            continue
        return PlannedEntity(look.label, look.pose, box, tag, foot, look,
                             blur=float(rng.uniform(0.3, 1.0)) if rng.random() < 0.5 else 0.0,
                             noise=float(rng.uniform(0.0, 6.0)),
                             grain_offset=(int(rng.integers(_GRAIN_MARGIN)), int(rng.integers(_GRAIN_MARGIN))))
    return None


def _nametag_rect(look: _CogLook | _ToonLook, box: tuple[int, int, int, int], frame_height: int
                  ) -> tuple[int, int, int, int] | None:
    lines, _ = look.nametag()
    entity_height = box[3] - box[1]
    size = _font_size(entity_height, frame_height)
    pad = max(1, size // 4)
    text_width = max(_text_width(line, size) for line in lines)
    tag_w = math.ceil(text_width) + 2 * pad
    tag_h = len(lines) * (size + 1) + 2 * pad
    gap = max(4, round(0.06 * entity_height))
    cx = (box[0] + box[2]) / 2
    left = round(cx - tag_w / 2)
    bottom = box[1] - gap
    top = bottom - tag_h
    if top < 1:
        return None
    return left, top, left + tag_w, bottom


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int], margin: int = 0) -> int:
    w = min(a[2], b[2]) - max(a[0], b[0]) + 2 * margin
    h = min(a[3], b[3]) - max(a[1], b[1]) + 2 * margin
    return max(0, w) * max(0, h)


def _area(box: tuple[int, int, int, int]) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def _fits(box: tuple[int, int, int, int], tag: tuple[int, int, int, int], foot: int,
          placed: Sequence[PlannedEntity]) -> bool:
    """Nametags touch no box and no other nametag; no entity is hidden more than _MAX_OCCLUDED."""
    hidden_here = 0
    for other in placed:
        if _overlap(tag, other.box, 3) or _overlap(box, other.nametag, 3) or _overlap(tag, other.nametag, 2):
            return False
        shared = _overlap(box, other.box)
        if not shared:
            continue
        if other.foot > foot:  # in front (ties: the newcomer is drawn later, in front)
            hidden_here += shared
        else:
            hidden_there = shared + sum(_overlap(other.box, e.box) for e in placed if e.foot > other.foot)
            if hidden_there > _MAX_OCCLUDED * _area(other.box):
                return False
    return hidden_here <= _MAX_OCCLUDED * _area(box)


def _choose_effects(rng: np.random.Generator) -> _Effects:
    brightness = float(rng.uniform(0.72, 1.15))
    gains = tuple(brightness * float(rng.uniform(0.94, 1.06)) for _ in range(3))
    return _Effects(
        gains=gains,  # type: ignore[arg-type]
        gamma=float(rng.uniform(0.85, 1.15)),
        shade=float(rng.uniform(0.1, 0.35)),
        light_from_left=bool(rng.random() < 0.5),
        jpeg_quality=int(rng.integers(35, 93)) if rng.random() < 0.75 else 0,
    )


def _random_color(rng: np.random.Generator) -> RGB:
    """A clothing colour: any hue, from dull and dark to bright."""
    hue, sat, val = float(rng.random()), float(rng.uniform(0.15, 0.95)), float(rng.uniform(0.25, 0.98))
    i = int(hue * 6) % 6
    f = hue * 6 - int(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    r, g, b = ((val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q))[i]
    return round(r * 255), round(g * 255), round(b * 255)


def _jitter(rng: np.random.Generator | _Rand, color: RGB, amount: int) -> RGB:
    shift = rng.integers(-amount, amount + 1, 3)
    return tuple(int(min(255, max(0, c + s))) for c, s in zip(color, shift))  # type: ignore[return-value]


def _shade(color: RGB, factor: float) -> RGB:
    r, g, b = (round(c * factor) for c in color)
    return min(255, max(0, r)), min(255, max(0, g)), min(255, max(0, b))


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Entities, drawn in their own units: feet centre at (0, 0), y upwards
# --------------------------------------------------------------------------------------------

class _Pen:
    """Draws an entity in body units onto a sprite, or, without a sprite, measures its extent."""

    def __init__(self, draw: ImageDraw.ImageDraw | None = None, origin: tuple[float, float] = (0.0, 0.0),
                 scale: float = 1.0, mirror: bool = False) -> None:
        self._draw = draw
        self._ox, self._oy = origin
        self._scale = scale
        self._flip = -1.0 if mirror else 1.0
        self._outline = max(1, round(scale * 0.012))
        self.left = self.right = self.top = 0.0

    def _xy(self, points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
        flip, ox, oy, scale = self._flip, self._ox, self._oy, self._scale
        if self._draw is None:
            points = list(points)
            xs = [x * flip for x, _ in points]
            self.left, self.right = min(self.left, *xs), max(self.right, *xs)
            self.top = max(self.top, *(y for _, y in points))
        return [(ox + x * flip * scale, oy - y * scale) for x, y in points]

    def poly(self, points: Sequence[tuple[float, float]], fill: RGB, outline: bool = True) -> None:
        xy = self._xy(points)
        if self._draw is not None and len(xy) >= 3:
            self._draw.polygon(xy, fill=fill, outline=_shade(fill, 0.55) if outline else None,
                               width=self._outline)

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: RGB, outline: bool = True) -> None:
        (x0, y0), (x1, y1) = self._xy([(cx - rx, cy + ry), (cx + rx, cy - ry)])
        if self._draw is not None:
            box = (min(x0, x1), y0, max(x0, x1), max(y0, y1))
            self._draw.ellipse(box, fill=fill, outline=_shade(fill, 0.55) if outline else None,
                               width=self._outline)

    def rect(self, x0: float, y0: float, x1: float, y1: float, fill: RGB, outline: bool = True) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], fill, outline)

    def line(self, points: Sequence[tuple[float, float]], fill: RGB, width: float) -> None:
        xy = self._xy(points)
        if self._draw is not None:
            self._draw.line(xy, fill=fill, width=max(1, round(width * self._scale)))


@functools.lru_cache(maxsize=4096)
def _measure(look: _CogLook | _ToonLook) -> tuple[float, float, float]:
    """Left, right and top of an entity in its units (its feet are at 0)."""
    pen = _Pen(mirror=look.mirror)
    look.draw(pen)
    return pen.left, pen.right, pen.top


def _ellipse_points(w: float, h: float, y0: float, n: int = 24) -> list[tuple[float, float]]:
    return [(w / 2 * math.cos(t), y0 + h / 2 + h / 2 * math.sin(t))
            for t in (2 * math.pi * k / n for k in range(n))]


def _shape_points(shape: str, w: float, h: float, y0: float) -> list[tuple[float, float]]:
    """Outline of a head ``w`` wide and ``h`` tall whose bottom is at ``y0``."""
    if shape in ("round", "oval", "wide"):
        return _ellipse_points(w, h, y0)
    if shape == "egg":
        return [(x * (1 - 0.28 * max(0.0, (y - y0) / h - 0.5) * 2), y) for x, y in _ellipse_points(w, h, y0)]
    if shape == "pointy":
        base = [(w / 2 * math.cos(t), y0 + 0.35 * h * (1 + math.sin(t)))
                for t in np.linspace(math.pi, 2 * math.pi, 13)]
        return base + [(w * 0.32, y0 + h * 0.62), (0.0, y0 + h), (-w * 0.32, y0 + h * 0.62)]
    if shape == "square":
        r = 0.15 * min(w, h)
        pts: list[tuple[float, float]] = []
        for cx, cy, start in ((w / 2 - r, y0 + r, -90), (w / 2 - r, y0 + h - r, 0),
                              (-w / 2 + r, y0 + h - r, 90), (-w / 2 + r, y0 + r, 180)):
            pts += [(cx + r * math.cos(math.radians(start + a)), cy + r * math.sin(math.radians(start + a)))
                    for a in (0, 45, 90)]
        return pts
    if shape == "trapezoid":
        return [(-0.32 * w, y0), (0.32 * w, y0), (0.5 * w, y0 + 0.75 * h), (0.42 * w, y0 + h),
                (-0.42 * w, y0 + h), (-0.5 * w, y0 + 0.75 * h)]
    if shape == "dome":
        cap = [(x, y - 0.1 * h) for x, y in _ellipse_points(w, 1.1 * h, y0) if y >= y0 + 0.55 * h]
        base = [(-w / 2, y0 + 0.1 * h), (-0.4 * w, y0), (0.4 * w, y0), (w / 2, y0 + 0.1 * h)]
        return base + sorted(cap, reverse=True)
    if shape == "bean":
        return [(x - 0.22 * w * max(0.0, x / (w / 2)) ** 2 * max(0.0, 1 - abs(y - y0 - h / 2) / (h / 2)) ** 2, y)
                for x, y in _ellipse_points(w, h, y0)]
    raise ValueError(f"unknown head shape {shape!r}")


def _clip(points: Sequence[tuple[float, float]], axis: int, value: float, keep_above: bool
          ) -> list[tuple[float, float]]:
    """The part of a polygon on one side of the line ``point[axis] == value`` (Sutherland-Hodgman)."""
    def inside(p: tuple[float, float]) -> bool:
        return p[axis] >= value if keep_above else p[axis] <= value

    out: list[tuple[float, float]] = []
    for a, b in zip(points, list(points[1:]) + [points[0]]):
        if inside(a):
            out.append(a)
        if inside(a) != inside(b):
            t = (value - a[axis]) / (b[axis] - a[axis])
            out.append((a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])))
    return out


@dataclass(frozen=True)
class _Body:
    """Cog body proportions in body units (feet to neck is about one unit)."""

    leg: float
    torso: float
    shoulder: float  # half-widths
    waist: float
    leg_w: float
    leg_gap: float
    arm: float
    arm_w: float


_BODIES = {
    "A": _Body(leg=0.50, torso=0.42, shoulder=0.17, waist=0.12, leg_w=0.045, leg_gap=0.022, arm=0.40, arm_w=0.05),
    "B": _Body(leg=0.40, torso=0.40, shoulder=0.19, waist=0.16, leg_w=0.05, leg_gap=0.03, arm=0.36, arm_w=0.055),
    "C": _Body(leg=0.24, torso=0.44, shoulder=0.22, waist=0.26, leg_w=0.06, leg_gap=0.05, arm=0.34, arm_w=0.065),
}
_WHITE: RGB = (244, 244, 244)
_BLACK: RGB = (24, 22, 24)


def _draw_cog(pen: _Pen, look: _CogLook) -> None:
    body = _BODIES[look.spec.body]
    suit, dark = look.suit_color, _shade(look.suit_color, 0.78)
    hand = _HAND_COLORS[look.suit]
    side, back = look.pose == "side", look.pose == "back"
    leg, top = body.leg, body.leg + body.torso
    narrow = 0.55 if side else 1.0
    shoulder, waist = body.shoulder * narrow, body.waist * narrow
    legs = (-0.02, 0.025) if side else (-(body.leg_gap + body.leg_w), body.leg_gap + body.leg_w)
    for x in legs:
        pen.rect(x - body.leg_w, 0.03, x + body.leg_w, leg + 0.03, dark)
    for x in legs:
        forward = 0.035 if side else 0.0
        pen.ellipse(x + forward, 0.03, body.leg_w * (1.9 if side else 1.45), 0.035, _BLACK)
    torso = [(-waist * 0.85, leg - 0.02), (waist * 0.85, leg - 0.02), (waist, leg + 0.45 * body.torso),
             (shoulder, top - 0.05), (shoulder - 0.04, top), (-shoulder + 0.04, top), (-shoulder, top - 0.05),
             (-waist, leg + 0.45 * body.torso)]
    pen.poly(torso, suit)
    if side:
        wrist = top - 0.05 - body.arm
        pen.poly([(-0.03, top - 0.04), (0.05, top - 0.04), (0.07, wrist), (0.0, wrist)], dark)
        pen.ellipse(0.035, wrist, body.arm_w * 1.1, body.arm_w * 1.2, hand)
    else:
        if not back:
            collar = shoulder * 0.45
            pen.poly([(-collar, top), (collar, top), (0.0, leg + 0.5 * body.torso)], _WHITE)
            tie = _TIE_COLORS[look.suit]
            pen.poly([(-0.018, top - 0.01), (0.018, top - 0.01), (0.028, leg + 0.6 * body.torso),
                      (0.0, leg + 0.54 * body.torso), (-0.028, leg + 0.6 * body.torso)], tie)
            pen.line([(-collar, top), (-waist * 0.4, leg + 0.35 * body.torso)], _shade(suit, 0.6), 0.008)
            pen.line([(collar, top), (waist * 0.4, leg + 0.35 * body.torso)], _shade(suit, 0.6), 0.008)
        else:
            pen.line([(0.0, top - 0.02), (0.0, leg)], _shade(suit, 0.7), 0.008)
        wrist = top - 0.05 - body.arm
        for sign in (-1, 1):
            sx, hx = sign * shoulder, sign * (max(shoulder, waist) + body.arm_w * 0.6)
            pen.poly([(sx, top - 0.03), (sx - sign * body.arm_w * 1.6, top - 0.06),
                      (hx - sign * body.arm_w, wrist), (hx + sign * body.arm_w, wrist)], dark)
            pen.ellipse(hx, wrist, body.arm_w * 1.15, body.arm_w * 1.25, hand)
    _draw_cog_head(pen, look, top - 0.03)


def _draw_cog_head(pen: _Pen, look: _CogLook, y0: float) -> None:
    spec = look.spec
    w, h = spec.head_size
    side, back = look.pose == "side", look.pose == "back"
    cx = 0.02 if side else 0.0
    head = [(x + cx, y) for x, y in _shape_points(spec.head, w, h, y0)]
    color, extra = look.head_color, spec.extra_color
    if spec.extra == "wig":
        for px, py in ((-0.5, 0.55), (0.5, 0.55), (-0.45, 0.85), (0.45, 0.85), (-0.2, 1.02), (0.2, 1.02),
                       (0.0, 1.08), (-0.55, 0.25), (0.55, 0.25)):
            pen.ellipse(cx + px * w, y0 + py * h, 0.2 * w, 0.2 * h, extra)
    if spec.extra == "fin":
        pen.poly([(cx - 0.14 * w, y0 + 0.85 * h), (cx + 0.16 * w, y0 + 0.85 * h), (cx - 0.1 * w, y0 + 1.4 * h)],
                 _shade(color, 0.8))
    pen.poly(head, color)
    if spec.extra == "two_tone" and not back:
        pen.poly(_clip(head, 0, cx, keep_above=False), extra, outline=False)
    if spec.extra == "hair":
        pen.poly(_clip(head, 1, y0 + (0.4 if back else 0.7) * h, keep_above=True), extra, outline=False)
    if spec.extra == "tophat":
        pen.rect(cx - 0.55 * w, y0 + 0.92 * h, cx + 0.55 * w, y0 + 0.98 * h, extra)
        pen.rect(cx - 0.34 * w, y0 + 0.98 * h, cx + 0.34 * w, y0 + 1.55 * h, extra)
        pen.rect(cx - 0.34 * w, y0 + 0.98 * h, cx + 0.34 * w, y0 + 1.1 * h, _shade(extra, 1.8))
    if back:
        return
    eye_y = y0 + 0.56 * h
    eyes = (cx + 0.3 * w,) if side else (cx - 0.2 * w, cx + 0.2 * w)
    if spec.extra == "visor":
        pen.rect(cx - (0.0 if side else 0.42) * w, eye_y - 0.12 * h, cx + 0.46 * w, eye_y + 0.12 * h, extra)
    else:
        for ex in eyes:
            pen.ellipse(ex, eye_y, 0.05 * w, 0.06 * h, _BLACK, outline=False)
    if spec.extra == "glasses":
        for ex in eyes:
            pen.ellipse(ex, eye_y, 0.14 * w, 0.13 * h, (205, 222, 236))
            pen.ellipse(ex, eye_y, 0.04 * w, 0.05 * h, _BLACK, outline=False)
        if not side:
            pen.line([(cx - 0.06 * w, eye_y), (cx + 0.06 * w, eye_y)], extra, 0.01)
    mouth_x = (cx + 0.15 * w, cx + 0.4 * w) if side else (cx - 0.15 * w, cx + 0.15 * w)
    if spec.extra == "grin":
        mx = (mouth_x[0] + mouth_x[1]) / 2
        pen.poly([(mouth_x[0] - 0.08 * w, y0 + 0.32 * h), (mouth_x[1] + 0.08 * w, y0 + 0.32 * h),
                  (mx, y0 + 0.14 * h)], _WHITE)
    elif spec.extra == "beak":
        if side:
            pen.poly([(cx + 0.38 * w, y0 + 0.5 * h), (cx + 0.85 * w, y0 + 0.36 * h),
                      (cx + 0.36 * w, y0 + 0.25 * h)], extra)
        else:
            pen.poly([(cx - 0.16 * w, y0 + 0.45 * h), (cx + 0.16 * w, y0 + 0.45 * h), (cx, y0 + 0.08 * h)], extra)
    else:
        pen.line([(mouth_x[0], y0 + 0.25 * h), (mouth_x[1], y0 + 0.25 * h)], _shade(color, 0.45), 0.012)


def _draw_toon(pen: _Pen, look: _ToonLook) -> None:
    side = look.pose == "side"
    fur, glove = look.fur, _WHITE
    hip = look.leg
    legs = (-0.02, 0.03) if side else (-0.055, 0.055)
    for x in legs:
        pen.rect(x - 0.022, 0.04, x + 0.022, hip + 0.02, fur)
    for x in legs:
        pen.ellipse(x + (0.045 if side else 0.0), 0.035, 0.08 if side else 0.062, 0.04, look.shoes)
    half = 0.075 if side else 0.11
    if look.skirt:
        pen.poly([(-half * 1.5, hip - 0.02), (half * 1.5, hip - 0.02), (half, hip + 0.12), (-half, hip + 0.12)],
                 look.bottoms)
    else:
        pen.rect(-half, hip - 0.04, half, hip + 0.12, look.bottoms)
    low, high = hip + 0.1, hip + 0.1 + look.torso
    pen.poly([(-half, low), (half, low), (half * 0.85, high), (-half * 0.85, high)], look.shirt)
    if look.stripe is not None:
        mid = (low + high) / 2
        pen.rect(-half * 0.93, mid - 0.025, half * 0.93, mid + 0.025, look.stripe, outline=False)
    arms = (0.0,) if side else (-1.0, 1.0)
    for sign in arms:
        sx = sign * half * 0.85
        hx = sx + sign * 0.08 if sign else 0.04
        pen.poly([(sx - 0.02, high - 0.03), (sx + 0.02, high - 0.03), (hx + 0.018, low + 0.02),
                  (hx - 0.018, low + 0.02)], fur)
        pen.ellipse(sx, high - 0.04, 0.045, 0.045, look.shirt)
        pen.ellipse(hx, low + 0.01, 0.05, 0.05, glove)
    _draw_toon_head(pen, look, high - 0.03)


def _draw_toon_head(pen: _Pen, look: _ToonLook, y0: float) -> None:
    """Head and ears: the animal is told by these shapes, never by colour."""
    side, back = look.pose == "side", look.pose == "back"
    w, h = 0.36 * look.head, 0.34 * look.head
    fur, dark, light = look.fur, _shade(look.fur, 0.72), _mix(look.fur, _WHITE, 0.55)
    pink = _mix(look.fur, (250, 160, 180), 0.6)
    animal = look.animal
    cx = 0.02 if side else 0.0
    ears = (1.0,) if side else (-1.0, 1.0)
    if animal == "horse":
        w, h = w * 0.78, h * 1.3
    elif animal in ("deer", "rabbit"):
        w = w * 0.85
    # behind the head
    for s in ears:
        ex = cx + s * w * (0.12 if side else 1.0)
        if animal == "bear":
            pen.ellipse(cx + s * 0.36 * w - (0.1 * w if side else 0), y0 + 0.92 * h, 0.17 * w, 0.17 * w, fur)
        elif animal == "mouse":
            pen.ellipse(cx + s * 0.42 * w - (0.15 * w if side else 0), y0 + 1.02 * h, 0.3 * w, 0.3 * w, fur)
            pen.ellipse(cx + s * 0.42 * w - (0.15 * w if side else 0), y0 + 1.02 * h, 0.18 * w, 0.18 * w, pink,
                        outline=False)
        elif animal == "cat":
            bx = cx + s * 0.3 * w - (0.1 * w if side else 0)
            pen.poly([(bx - 0.18 * w, y0 + 0.75 * h), (bx + 0.18 * w, y0 + 0.75 * h),
                      (bx + s * 0.1 * w, y0 + 1.28 * h)], fur)
        elif animal == "rabbit":
            bx = cx + s * 0.2 * w - (0.12 * w if side else 0)
            pen.ellipse(bx, y0 + 1.35 * h, 0.13 * w, 0.55 * h, fur)
            if not back:
                pen.ellipse(bx, y0 + 1.35 * h, 0.06 * w, 0.42 * h, pink, outline=False)
        elif animal == "deer":
            bx = cx + s * 0.22 * w - (0.1 * w if side else 0)
            antler = (120, 84, 52)
            pen.line([(bx, y0 + 0.9 * h), (bx + s * 0.12 * w, y0 + 1.45 * h)], antler, 0.025)
            pen.line([(bx + s * 0.06 * w, y0 + 1.18 * h), (bx + s * 0.3 * w, y0 + 1.3 * h)], antler, 0.02)
            pen.ellipse(cx + s * 0.55 * w - (0.2 * w if side else 0), y0 + 0.72 * h, 0.22 * w, 0.08 * w, fur)
        elif animal == "monkey":
            pen.ellipse(cx + s * 0.55 * w - (0.35 * w if side else 0), y0 + 0.55 * h, 0.2 * w, 0.2 * w, fur)
            pen.ellipse(cx + s * 0.55 * w - (0.35 * w if side else 0), y0 + 0.55 * h, 0.11 * w, 0.11 * w, light,
                        outline=False)
        elif animal == "horse":
            pen.poly([(ex - s * 0.3 * w - 0.08 * w, y0 + 0.85 * h), (ex - s * 0.3 * w + 0.08 * w, y0 + 0.85 * h),
                      (ex - s * 0.25 * w, y0 + 1.12 * h)], fur)
        elif animal == "pig":
            bx = cx + s * 0.36 * w - (0.1 * w if side else 0)
            pen.poly([(bx - 0.14 * w, y0 + 0.8 * h), (bx + 0.14 * w, y0 + 0.8 * h),
                      (bx + s * 0.2 * w, y0 + 1.05 * h)], pink)
    # the head itself
    if animal == "crocodile":
        pen.ellipse(cx, y0 + 0.5 * h, 0.5 * w, 0.5 * h, fur)
        for s in ((1.0,) if side else (-1.0, 1.0)):
            pen.ellipse(cx + s * 0.25 * w + (0.05 * w if side else 0), y0 + 0.98 * h, 0.17 * w, 0.15 * h, fur)
    elif animal == "pig":
        pen.ellipse(cx, y0 + 0.45 * h, 0.53 * w, 0.45 * h, fur)
    elif animal == "mouse":
        pen.ellipse(cx, y0 + 0.45 * h, 0.45 * w, 0.45 * h, fur)
    else:
        pen.ellipse(cx, y0 + 0.5 * h, 0.5 * w, 0.5 * h, fur)
    if animal == "horse":
        pen.poly(_clip(_ellipse_points(w, h, y0), 1, y0 + 0.82 * h, keep_above=True), dark, outline=False)
    if back:
        if animal == "dog":
            for s in (-1.0, 1.0):
                pen.ellipse(cx + s * 0.48 * w, y0 + 0.45 * h, 0.15 * w, 0.36 * h, dark)
        return
    # the face
    eye_y = y0 + (0.78 if animal == "crocodile" else 0.6) * h
    eyes = (cx + 0.28 * w,) if side else (cx - 0.16 * w, cx + 0.16 * w)
    for ex in eyes:
        pen.ellipse(ex, eye_y, 0.1 * w, 0.14 * h, _WHITE)
        pen.ellipse(ex + (0.03 * w if side else 0), eye_y - 0.02 * h, 0.05 * w, 0.08 * h, _BLACK, outline=False)
    mx = cx + (0.45 * w if side else 0.0)
    if animal == "duck":
        if side:
            pen.ellipse(cx + 0.55 * w, y0 + 0.35 * h, 0.3 * w, 0.09 * h, (250, 160, 30))
        else:
            pen.ellipse(cx, y0 + 0.3 * h, 0.36 * w, 0.12 * h, (250, 160, 30))
    elif animal == "crocodile":
        if side:
            pen.poly([(cx + 0.2 * w, y0 + 0.08 * h), (cx + 1.05 * w, y0 + 0.12 * h), (cx + 1.1 * w, y0 + 0.42 * h),
                      (cx + 0.25 * w, y0 + 0.55 * h)], fur)
        else:
            pen.ellipse(cx, y0 + 0.25 * h, 0.55 * w, 0.24 * h, light)
            pen.line([(cx - 0.4 * w, y0 + 0.22 * h), (cx + 0.4 * w, y0 + 0.22 * h)], dark, 0.01)
    elif animal == "pig":
        pen.ellipse(mx, y0 + 0.32 * h, 0.13 * w if side else 0.2 * w, 0.13 * h, pink)
        if not side:
            for s in (-1.0, 1.0):
                pen.ellipse(cx + s * 0.07 * w, y0 + 0.32 * h, 0.035 * w, 0.05 * h, dark, outline=False)
    elif animal in ("dog", "horse", "bear", "monkey"):
        if animal == "monkey":
            pen.ellipse(cx + (0.2 * w if side else 0), y0 + 0.35 * h, 0.35 * w, 0.3 * h, light, outline=False)
        muzzle = {"dog": (0.22, 0.16), "horse": (0.3, 0.22), "bear": (0.18, 0.13), "monkey": (0.15, 0.1)}[animal]
        pen.ellipse(mx + (0.12 * w if side and animal != "monkey" else 0), y0 + 0.25 * h, muzzle[0] * w,
                    muzzle[1] * h, light)
        pen.ellipse(mx + (0.25 * w if side else 0), y0 + 0.32 * h, 0.07 * w, 0.05 * h, _BLACK, outline=False)
    elif animal in ("cat", "mouse", "rabbit", "deer"):
        pen.ellipse(mx + (0.1 * w if side else 0), y0 + 0.35 * h, 0.05 * w, 0.04 * h, (230, 110, 130),
                    outline=False)
        if animal == "cat":
            for s in ((1.0,) if side else (-1.0, 1.0)):
                pen.line([(mx + s * 0.1 * w, y0 + 0.32 * h), (mx + s * 0.45 * w, y0 + 0.38 * h)], dark, 0.006)
                pen.line([(mx + s * 0.1 * w, y0 + 0.28 * h), (mx + s * 0.45 * w, y0 + 0.24 * h)], dark, 0.006)
    if animal == "dog":
        for s in ears:
            pen.ellipse(cx + s * 0.48 * w - (0.35 * w if side else 0), y0 + 0.45 * h, 0.15 * w, 0.36 * h, dark)


def _sprite(entity: PlannedEntity) -> Image.Image:
    """Draw one entity into an RGBA image exactly the size of its planned box, plus a 1-pixel margin."""
    left, top, right, bottom = entity.box
    left_u, right_u, top_u = _measure(entity.look)
    scale = (bottom - top) / top_u
    cx = left - left_u * scale  # where the feet centre sits in frame coordinates
    width, height = right - left + 2, bottom - top + 2
    ss = _SUPERSAMPLE
    canvas = Image.new("RGBA", (width * ss, height * ss), (0, 0, 0, 0))
    pen = _Pen(ImageDraw.Draw(canvas), ((cx - left + 1) * ss, (bottom - top + 1) * ss), scale * ss,
               entity.look.mirror)
    entity.look.draw(pen)
    return canvas.convert("RGBa").reduce(ss)  # premultiplied: edges fade to the colour, not to black


# --------------------------------------------------------------------------------------------
# Streets: cached backdrops
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Style:
    sky: tuple[RGB, RGB]  # top, horizon
    sky_extra: str  # clouds, stars
    walls: tuple[RGB, ...]
    trims: tuple[RGB, ...]
    windows: tuple[RGB, ...]
    sidewalk: RGB
    ground: RGB
    ground_kind: str  # cobble, planks, tiles, snow, grass
    foliage: tuple[RGB, ...]


_STYLES: dict[str, _Style] = {
    "central": _Style(((52, 110, 226), (168, 210, 255)), "clouds",
                      ((242, 162, 62), (246, 206, 82), (238, 132, 112), (232, 112, 62), (250, 190, 122)),
                      ((44, 140, 72), (150, 92, 52), (62, 122, 172)), ((42, 150, 72), (72, 162, 202)),
                      (222, 198, 152), (226, 190, 134), "cobble", ((62, 160, 72), (92, 182, 62))),
    "dock": _Style(((110, 150, 210), (200, 215, 230)), "clouds",
                   ((122, 152, 182), (172, 132, 92), (92, 112, 142), (200, 180, 140)),
                   ((80, 60, 40), (220, 220, 220), (160, 50, 40)), ((230, 230, 180), (60, 80, 120)),
                   (170, 160, 140), (152, 112, 72), "planks", ((60, 110, 70),)),
    "gardens": _Style(((96, 160, 236), (200, 232, 250)), "clouds",
                      ((202, 182, 232), (182, 232, 202), (250, 240, 200), (250, 200, 210)),
                      ((120, 80, 150), (60, 140, 90), (230, 120, 150)), ((120, 80, 150), (80, 160, 210)),
                      (210, 200, 170), (92, 170, 72), "grass", ((52, 150, 62), (112, 190, 82), (200, 90, 140))),
    "melody": _Style(((72, 52, 150), (210, 160, 226)), "clouds",
                     ((232, 122, 182), (152, 102, 212), (82, 192, 192), (250, 170, 220)),
                     ((60, 40, 90), (250, 220, 80), (40, 120, 160)), ((250, 220, 80), (60, 40, 120)),
                     (190, 170, 200), (152, 132, 170), "tiles", ((80, 150, 120), (180, 90, 170))),
    "brrrgh": _Style(((150, 176, 210), (222, 232, 244)), "clouds",
                     ((222, 236, 250), (170, 200, 230), (200, 210, 222), (140, 170, 210)),
                     ((60, 90, 140), (250, 250, 255), (120, 60, 60)), ((250, 220, 120), (100, 140, 200)),
                     (236, 240, 248), (232, 238, 248), "snow", ((220, 235, 245), (60, 110, 90))),
    "dreamland": _Style(((14, 18, 52), (62, 52, 112)), "stars",
                        ((62, 52, 102), (42, 62, 112), (92, 72, 122), (52, 42, 82)),
                        ((150, 140, 200), (30, 30, 50), (220, 200, 120)), ((250, 222, 120), (120, 130, 200)),
                        (90, 90, 120), (72, 76, 104), "tiles", ((30, 60, 70), (50, 50, 100))),
}
_STYLE_NAMES = tuple(_STYLES)


def _backdrop_width(width: int) -> int:
    return width + round(width * _BACKDROP_PAN)


class _Rand(random.Random):
    """Scalar draws for backdrops with numpy's Generator names, at a tenth of numpy's per-call cost.

    Only ``random()`` is used underneath, whose Mersenne Twister stream Python keeps stable.
    """

    def uniform(self, a: float, b: float) -> float:  # type: ignore[override]
        return a + (b - a) * self.random()

    def integers(self, low: int, high: int | None = None, size: int | None = None) -> Any:
        if high is None:
            low, high = 0, low
        if size is None:
            return low + int(self.random() * (high - low))
        return [low + int(self.random() * (high - low)) for _ in range(size)]


def _style_rng(style: str, variant: int, *more: int) -> _Rand:
    return _Rand("/".join(map(str, (_STYLE_SEED, style, variant, *more))))


def _horizon(style: str, variant: int, height: int) -> int:
    """The row where the ground meets the buildings; fixed per backdrop."""
    return round(height * float(_style_rng(style, variant).uniform(0.4, 0.54)))


@functools.lru_cache(maxsize=2 * len(_STYLES) * _BACKGROUND_VARIANTS)
def _backdrop(style: str, variant: int, width: int, height: int, flip: bool) -> Image.Image:
    """A street with no one in it, wider than the frame; cached per process (callers crop, never draw on it)."""
    if flip:
        return _backdrop(style, variant, width, height, False).transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    st = _STYLES[style]
    rng = _style_rng(style, variant, width, height)
    horizon = _horizon(style, variant, height)
    unit = height / 600
    image = Image.new("RGB", (width, height))
    pixels = np.zeros((height, width, 3), np.float32)
    t = np.linspace(0, 1, max(1, horizon))[:, None]
    pixels[:horizon] = (np.array(st.sky[0]) * (1 - t) + np.array(st.sky[1]) * t)[:, None, :]
    image = Image.fromarray(pixels.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    _draw_sky(draw, rng, st, width, horizon, unit)
    walk = horizon + round(0.05 * height)
    _draw_ground(draw, rng, st, width, height, walk, unit)
    draw.rectangle((0, horizon, width, walk), fill=st.sidewalk)
    draw.line((0, walk, width, walk), fill=_shade(st.sidewalk, 0.7), width=max(1, round(3 * unit)))
    _draw_buildings(draw, rng, st, width, horizon, height, unit)
    _draw_props(draw, rng, st, width, horizon, walk, unit)
    return image


def _draw_sky(draw: ImageDraw.ImageDraw, rng: _Rand, st: _Style, width: int, horizon: int,
              unit: float) -> None:
    if st.sky_extra == "stars":
        for _ in range(int(width * horizon / 900)):
            x, y = rng.uniform(0, width), rng.uniform(0, horizon)
            r = rng.uniform(0.5, 1.6) * unit
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(250, 250, 220))
        return
    for _ in range(int(rng.integers(3, 8))):
        x, y = rng.uniform(0, width), rng.uniform(0.05, 0.6) * horizon
        size = rng.uniform(30, 80) * unit
        shadow = _mix((255, 255, 255), st.sky[1], 0.3)
        for _ in range(int(rng.integers(4, 8))):
            dx, dy = rng.uniform(-1.4, 1.4) * size, rng.uniform(-0.3, 0.3) * size
            r = rng.uniform(0.4, 0.8) * size
            drop = 3 * unit
            draw.ellipse((x + dx - r, y + dy - r * 0.55 + drop, x + dx + r, y + dy + r * 0.55 + drop), fill=shadow)
            draw.ellipse((x + dx - r, y + dy - r * 0.55, x + dx + r, y + dy + r * 0.5), fill=(252, 252, 255))


def _draw_buildings(draw: ImageDraw.ImageDraw, rng: _Rand, st: _Style, width: int, horizon: int,
                    height: int, unit: float) -> None:
    base = horizon + round(0.01 * height)
    x = -float(rng.uniform(0, 60 * unit))
    while x < width:
        w = float(rng.uniform(110, 260)) * unit
        if rng.random() < 0.22:
            _draw_tree(draw, rng, st, x + w / 2, base, float(rng.uniform(0.3, 0.5)) * height, unit)
            x += w * 0.6
            continue
        top = base - float(rng.uniform(0.14, 0.42)) * height
        wall = st.walls[int(rng.integers(len(st.walls)))]
        trim = st.trims[int(rng.integers(len(st.trims)))]
        glass = st.windows[int(rng.integers(len(st.windows)))]
        draw.rectangle((x, top, x + w, base), fill=wall, outline=_shade(wall, 0.7), width=max(1, round(2 * unit)))
        if rng.random() < 0.5:
            draw.polygon([(x - 8 * unit, top), (x + w + 8 * unit, top), (x + w / 2, top - w * 0.28)], fill=trim,
                         outline=_shade(trim, 0.6))
        else:
            draw.rectangle((x - 6 * unit, top - 10 * unit, x + w + 6 * unit, top + 8 * unit), fill=trim,
                           outline=_shade(trim, 0.6))
        rows = max(1, int((base - top) / (75 * unit)) - 1)
        cols = int(rng.integers(1, 4))
        round_windows = rng.random() < 0.5
        for r in range(rows):
            for c in range(cols):
                wx = x + w * (c + 0.5) / cols
                wy = top + (r + 0.6) * (base - top - 60 * unit) / max(1, rows)
                ww, wh = min(26 * unit, w / (cols * 3)), 24 * unit
                shape = draw.ellipse if round_windows else draw.rounded_rectangle
                kwargs = {} if round_windows else {"radius": 6 * unit}
                frame = 3 * unit
                shape((wx - ww - frame, wy - wh - frame, wx + ww + frame, wy + wh + frame), fill=trim, **kwargs)
                shape((wx - ww, wy - wh, wx + ww, wy + wh), fill=glass, **kwargs)
                draw.line((wx, wy - wh, wx, wy + wh), fill=_shade(glass, 0.6), width=max(1, round(2 * unit)))
        door_x = x + w * float(rng.uniform(0.3, 0.7))
        dw, dh = 24 * unit, 62 * unit
        draw.rounded_rectangle((door_x - dw, base - dh, door_x + dw, base), radius=dw, fill=trim,
                               outline=_shade(trim, 0.55), width=max(1, round(2 * unit)))
        x += w


def _draw_tree(draw: ImageDraw.ImageDraw, rng: _Rand, st: _Style, x: float, base: float,
               size: float, unit: float) -> None:
    trunk = (120, 86, 56)
    draw.rectangle((x - 0.05 * size, base - 0.55 * size, x + 0.05 * size, base), fill=trunk,
                   outline=_shade(trunk, 0.6))
    leaves = st.foliage[int(rng.integers(len(st.foliage)))]
    for _ in range(int(rng.integers(5, 9))):
        dx, dy = rng.uniform(-0.3, 0.3) * size, rng.uniform(-0.85, -0.45) * size
        r = rng.uniform(0.15, 0.25) * size
        fill = _jitter(rng, leaves, 14)
        draw.ellipse((x + dx - r, base + dy - r, x + dx + r, base + dy + r), fill=fill, outline=_shade(fill, 0.7))


def _draw_props(draw: ImageDraw.ImageDraw, rng: _Rand, st: _Style, width: int, horizon: int,
                walk: int, unit: float) -> None:
    """Lamp posts, hydrants, mailboxes and bins: colourful things that are neither Cogs nor Toons."""
    for _ in range(int(rng.integers(2, 6))):
        x = float(rng.uniform(0, width))
        y = float(rng.uniform(horizon + 2 * unit, walk))
        kind = int(rng.integers(4))
        if kind == 0:
            pole = (60, 150, 140)
            draw.rectangle((x - 3 * unit, y - 150 * unit, x + 3 * unit, y), fill=pole)
            draw.ellipse((x - 9 * unit, y - 170 * unit, x + 9 * unit, y - 146 * unit), fill=(250, 230, 110),
                         outline=pole)
        elif kind == 1:
            red = (210, 30, 30)
            draw.rounded_rectangle((x - 8 * unit, y - 30 * unit, x + 8 * unit, y), radius=5 * unit, fill=red,
                                   outline=_shade(red, 0.6))
        elif kind == 2:
            box = (230, 130, 40) if rng.random() < 0.5 else (60, 90, 180)
            draw.rounded_rectangle((x - 12 * unit, y - 40 * unit, x + 12 * unit, y), radius=8 * unit, fill=box,
                                   outline=_shade(box, 0.6))
        else:
            bin_ = (120, 130, 120)
            draw.rectangle((x - 10 * unit, y - 32 * unit, x + 10 * unit, y), fill=bin_, outline=_shade(bin_, 0.6))


def _draw_ground(draw: ImageDraw.ImageDraw, rng: _Rand, st: _Style, width: int, height: int,
                 top: int, unit: float) -> None:
    ground = st.ground
    draw.rectangle((0, top, width, height), fill=ground)
    kind = st.ground_kind
    y = float(top)
    if kind in ("cobble", "planks", "tiles"):
        vanish = width / 2
        columns = np.linspace(-2.5 * width, 3.5 * width, 36)
        rows = []
        while y < height:
            rows.append(y)
            step = 2 + 0.07 * (y - top) + 3 * unit
            y += step * (0.9 if kind == "cobble" else 1.6)
        rows.append(float(height))
        for r, (y0, y1) in enumerate(zip(rows, rows[1:])):
            c = y1 - y0
            if kind == "cobble":
                x = -float(rng.uniform(0, c * 1.6))
                while x < width:
                    sw = c * float(rng.uniform(1.3, 2.0))
                    fill = _shade(_jitter(rng, ground, 4), rng.uniform(0.88, 1.06))
                    draw.ellipse((x, y0, x + sw, y0 + c * 1.05), fill=fill, outline=_shade(ground, 0.8))
                    x += sw * 0.95
            elif kind == "planks":
                fill = _jitter(rng, ground, 14)
                draw.rectangle((0, y0, width, y1), fill=fill, outline=_shade(ground, 0.65))
                for _ in range(int(rng.integers(2, 6))):
                    jx = float(rng.uniform(0, width))
                    draw.line((jx, y0, jx, y1), fill=_shade(ground, 0.65), width=max(1, round(unit)))
            else:
                a, b = (y0 - top) / (height - top), (y1 - top) / (height - top)
                for k, (c0, c1) in enumerate(zip(columns, columns[1:])):
                    if (k + r) % 2:
                        continue
                    quad = [(vanish + (c0 - vanish) * a, y0), (vanish + (c1 - vanish) * a, y0),
                            (vanish + (c1 - vanish) * b, y1), (vanish + (c0 - vanish) * b, y1)]
                    draw.polygon(quad, fill=_shade(ground, 0.88))
    elif kind == "snow":
        for _ in range(int(width * (height - top) / 700)):
            x, yy = rng.uniform(0, width), rng.uniform(top, height)
            r = (2 + 0.12 * (yy - top)) * rng.uniform(0.6, 1.6)
            draw.ellipse((x - r, yy - r * 0.35, x + r, yy + r * 0.35), fill=_jitter(rng, _shade(ground, 0.97), 5))
    elif kind == "grass":
        for _ in range(int(width * (height - top) / 120)):
            x, yy = rng.uniform(0, width), rng.uniform(top, height)
            length = (1 + 0.04 * (yy - top)) * rng.uniform(0.5, 1.5)
            draw.line((x, yy, x + rng.uniform(-0.4, 0.4) * length, yy - length),
                      fill=_jitter(rng, _shade(ground, rng.uniform(0.75, 1.15)), 8), width=max(1, round(unit)))
        path = (176, 96, 72)
        a0, a1 = float(rng.uniform(0.3, 0.5)) * width, float(rng.uniform(0.55, 0.7)) * width
        spread = (a1 - a0) * 0.8
        draw.polygon([(a0, top), (a1, top), (a1 + spread, height), (a0 - spread, height)], fill=path)
        yy = float(top)
        while yy < height:
            yy += 2 + 0.06 * (yy - top) + 2 * unit
            f = (yy - top) / (height - top)
            draw.line((a0 - spread * f, yy, a1 + spread * f, yy), fill=_shade(path, 0.75), width=max(1, round(unit)))


# --------------------------------------------------------------------------------------------
# Rendering a plan
# --------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _grain_tile(height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng(_GRAIN_SEED)
    tile = rng.standard_normal((height, width, 3), np.float32)
    tile.flags.writeable = False
    return tile


def _grain(height: int, width: int) -> np.ndarray:
    """Standard-normal grain at least ``height`` x ``width``, shared by every scene of the process."""
    size = 256
    while size < max(height, width):
        size *= 2
    return _grain_tile(size, size)


@functools.lru_cache(maxsize=4096)
def _text_width(text: str, size: int) -> float:
    return _font(size).getlength(text)


@functools.lru_cache(maxsize=4096)
def _text_mask(text: str, size: int) -> tuple[Image.Image, int, int]:
    """Anti-aliased coverage of ``text`` and its offset from the pen position; cached, as the
    same names, suits and levels recur in every scene and FreeType rendering is slow."""
    font = _font(size)
    x0, y0, x1, y1 = (int(v) for v in font.getbbox(text))
    mask = Image.new("L", (max(1, x1 - x0), max(1, y1 - y0)))
    ImageDraw.Draw(mask).text((-x0, -y0), text, fill=255, font=font)
    return mask, x0, y0


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def render_scene(config: SynthConfig, index: int) -> Scene:
    """Plan and draw scene ``index`` of ``config.seed``; pure and deterministic."""
    return render_plan(plan_scene(config, index))


def render_plan(plan: ScenePlan) -> Scene:
    """Draw a plan: backdrop, entities back to front with their shadows, nametags, then the camera."""
    width, height = plan.size
    backdrop = _backdrop(plan.style, plan.variant, _backdrop_width(width), height, plan.flip)
    frame = backdrop.crop((plan.pan, 0, plan.pan + width, height))
    shadows = ImageDraw.Draw(frame, "RGBA")
    masks: list[tuple[np.ndarray, int, int]] = []
    for entity in plan.entities:
        left, top, right, bottom = entity.box
        rx, ry = (right - left) * 0.55, max(2.0, (bottom - top) * 0.035)
        cx = (left + right) / 2
        shadows.ellipse((cx - rx, bottom - ry, cx + rx, bottom + ry), fill=(0, 0, 0, 70))
        sprite = _finish_sprite(_sprite(entity), entity, plan.effects)
        frame.paste(sprite, (left - 1, top - 1), sprite)
        masks.append((np.asarray(sprite.getchannel("A")) > 24, left - 1, top - 1))
    objects = []
    for i, entity in enumerate(plan.entities):
        box = _visible_box(i, masks, width, height)
        if box is None:
            logger.debug("%s: %s is hidden behind others; left out of the annotation", plan.name, entity.label)
            continue
        objects.append(VocObject(name=entity.label, box=Box(*map(float, box))))
    draw = ImageDraw.Draw(frame, "RGBA")
    for entity in plan.entities:
        _draw_nametag(frame, draw, entity, height)
    image = _camera(frame, plan.effects)
    annotation = Annotation(filename=f"{plan.name}.png", size=ImageSize(width, height, 3), objects=tuple(objects))
    nametags = tuple(Box(*map(float, e.nametag)) for e in plan.entities)
    return Scene(image, annotation, nametags)


def _finish_sprite(sprite: Image.Image, entity: PlannedEntity, effects: _Effects) -> Image.Image:
    """Light the entity from the scene's side, add grain, then blur it (premultiplied RGBa in and out)."""
    pixels = np.array(sprite)
    height, width = pixels.shape[:2]
    rgb = pixels[..., :3].astype(np.float32)
    ramp = np.linspace(1 + effects.shade / 2, 1 - effects.shade / 2, width, dtype=np.float32)
    rgb *= ramp[::1 if effects.light_from_left else -1, None]
    if entity.noise:
        oy, ox = entity.grain_offset
        rgb += _grain(height + oy, width + ox)[oy:oy + height, ox:ox + width] * entity.noise
    np.minimum(rgb, pixels[..., 3:], out=rgb)  # premultiplied colour never exceeds alpha
    np.maximum(rgb, 0, out=rgb)
    pixels[..., :3] = rgb
    sprite = Image.fromarray(pixels, "RGBa")
    if entity.blur:
        sprite = sprite.filter(ImageFilter.GaussianBlur(entity.blur))
    return sprite.convert("RGBA")


def _visible_box(i: int, masks: Sequence[tuple[np.ndarray, int, int]], width: int, height: int
                 ) -> tuple[int, int, int, int] | None:
    """Tight box of what is left of entity ``i`` once the entities in front of it are drawn."""
    mask, x0, y0 = masks[i]
    visible = mask.copy()
    h, w = mask.shape
    for other, ox, oy in masks[i + 1:]:
        ax0, ay0 = max(x0, ox), max(y0, oy)
        ax1, ay1 = min(x0 + w, ox + other.shape[1]), min(y0 + h, oy + other.shape[0])
        if ax0 < ax1 and ay0 < ay1:
            visible[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0] &= ~other[ay0 - oy:ay1 - oy, ax0 - ox:ax1 - ox]
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    if not len(rows):
        return None
    box = (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)
    return max(0, box[0]), max(0, box[1]), min(width, box[2]), min(height, box[3])


def _draw_nametag(frame: Image.Image, draw: ImageDraw.ImageDraw, entity: PlannedEntity, frame_height: int) -> None:
    """A translucent plate with one line per name part, like the game's floating nametags."""
    lines, color = entity.look.nametag()
    left, top, right, bottom = entity.nametag
    size = _font_size(entity.box[3] - entity.box[1], frame_height)
    pad = max(1, size // 4)
    draw.rounded_rectangle((left, top, right - 1, bottom - 1), radius=pad, fill=(232, 232, 232, 200))
    for k, line in enumerate(lines):
        mask, dx, dy = _text_mask(line, size)
        x = round((left + right) / 2 - _text_width(line, size) / 2)
        frame.paste(color, (x + dx, top + pad + k * (size + 1) + dy), mask)


def _camera(frame: Image.Image, effects: _Effects) -> Image.Image:
    """Lighting and JPEG compression over the whole frame."""
    levels = (np.arange(256) / 255) ** effects.gamma * 255
    table = np.concatenate([np.minimum(255, np.round(levels * gain)) for gain in effects.gains])
    frame = frame.point(table.astype(int).tolist())
    if effects.jpeg_quality:
        buffer = io.BytesIO()
        frame.save(buffer, "JPEG", quality=effects.jpeg_quality)
        frame = Image.open(buffer)
        frame.load()
    return frame.convert("RGB")


def encode_png(image: Image.Image) -> bytes:
    """Lossless 8-bit RGB PNG, byte-identical for identical pixels.

    Every row uses the PNG 'Up' filter and zlib level 1: twice as fast as Pillow's per-row
    filter search on noisy screenshots, and at most a few per cent larger.
    """
    pixels = np.asarray(image.convert("RGB"), np.uint8)
    height, width = pixels.shape[:2]
    flat = pixels.reshape(height, width * 3)
    rows = np.empty((height, width * 3 + 1), np.uint8)
    rows[:, 0] = 2
    rows[0, 1:] = flat[0]
    np.subtract(flat[1:], flat[:-1], out=rows[1:, 1:])
    rows[0, 0] = 0

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
            + chunk(b"IEND", b""))


# --------------------------------------------------------------------------------------------
# Writing files
# --------------------------------------------------------------------------------------------

def synthesize(out_dir: Path, config: SynthConfig, *, overwrite: bool = False, workers: int | None = None,
               progress: bool = False) -> SynthResult:
    """Write ``config.count`` screenshots with their XML into ``out_dir``; safe to kill and re-run.

    Files that are already there with the same pixels are left alone (a re-run finishes the
    job); a file of the same name with other pixels (another --size, other weights) is a
    conflict: nothing is written unless ``overwrite``. ``workers`` processes render in parallel
    (default: every core when there are many scenes); the files do not depend on it.
    """
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: is a file, not a folder; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    with _folder_lock(out_dir):
        _remove_stale_temp_files(out_dir)
        _warn_about_foreign_images(out_dir)
        return _synthesize(out_dir, config, overwrite, _workers(workers, config.count), progress)


def _synthesize(out_dir: Path, config: SynthConfig, overwrite: bool, workers: int, progress: bool) -> SynthResult:
    existing = [i for i in range(config.count) if any(_paths(out_dir, config.seed, i)[k].exists() for k in (0, 1))]
    fresh = sorted(set(range(config.count)) - set(existing))
    outcomes: dict[int, tuple[str, tuple[str, ...]]] = {}
    with _Runner(workers) as runner:
        with _progress(progress, len(existing), "checking") as bar:
            for index, outcome in runner.map(_check_scene, out_dir, config, existing):
                outcomes[index] = outcome
                bar.update(1)
        conflicts = [i for i, (status, _) in outcomes.items() if status == "conflict"]
        if conflicts and not overwrite:
            names = ", ".join(scene_name(config.seed, i) for i in conflicts[:3])
            more = f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
            raise UsageError(
                f"{out_dir}: {names}{more} (.png/.xml) already exist and differ from what this command "
                "makes (another --size, --weight or --toon-share?); nothing was written. Use --overwrite "
                "to replace them, or another --out"
            )
        incomplete = [i for i, (status, _) in outcomes.items() if status == "incomplete"]
        todo = sorted(fresh + conflicts + incomplete)
        # Rendering is CPU work; writing waits on fsync. Threads write while the next scenes render.
        with _progress(progress, len(todo), "synth") as bar, ThreadPoolExecutor(_WRITER_THREADS) as writers:
            pending: collections.deque[Future[None]] = collections.deque()
            for index, (png_data, xml_data, labels) in runner.map(_encode_scene, out_dir, config, todo):
                pending.append(writers.submit(_write_pair, *_paths(out_dir, config.seed, index), png_data, xml_data))
                while len(pending) > _WRITE_BACKLOG:
                    pending.popleft().result()  # raises the error of a failed write
                outcomes[index] = ("written", labels)
                bar.update(1)
            for future in pending:
                future.result()
    counts = {label: 0 for label in LABELS}
    for _, labels in outcomes.values():
        for label in labels:
            counts[label] += 1
    present = sum(1 for status, _ in outcomes.values() if status == "present")
    return SynthResult(out_dir, config.count - present, present,
                       tuple((label, n) for label, n in counts.items() if n))


def _paths(out_dir: Path, seed: int, index: int) -> tuple[Path, Path]:
    stem = scene_name(seed, index)
    return out_dir / f"{stem}.png", out_dir / f"{stem}.xml"


def _xml(scene: Scene, png: Path) -> bytes:
    annotation = dataclasses.replace(scene.annotation, folder=png.parent.name, path=str(png))
    return format_annotation(annotation).encode("utf-8")


def _check_scene(out_dir: Path, config: SynthConfig, index: int) -> tuple[str, tuple[str, ...]]:
    """Compare files already there with what scene ``index`` would be; writes nothing.

    ``present``: the PNG holds this scene's pixels and its XML is there; ``incomplete``: the same
    PNG without its XML (a run killed between the two writes); ``conflict``: anything else.
    """
    png, xml = _paths(out_dir, config.seed, index)
    scene = render_scene(config, index)
    labels = tuple(obj.name for obj in scene.annotation.objects)
    if not png.exists():
        return "conflict", labels
    try:
        with Image.open(png) as existing:
            same = existing.size == scene.image.size and np.array_equal(
                np.asarray(existing.convert("RGB")), np.asarray(scene.image))
    except (OSError, ValueError, Image.DecompressionBombError):
        same = False
    if not same:
        return "conflict", labels
    return ("present" if xml.exists() else "incomplete"), labels


def _encode_scene(out_dir: Path, config: SynthConfig, index: int) -> tuple[bytes, bytes, tuple[str, ...]]:
    """Scene ``index`` as PNG bytes, XML bytes and its labels (runs in a worker)."""
    png, _ = _paths(out_dir, config.seed, index)
    scene = render_scene(config, index)
    return encode_png(scene.image), _xml(scene, png), tuple(obj.name for obj in scene.annotation.objects)


def _write_pair(png: Path, xml: Path, png_data: bytes, xml_data: bytes) -> None:
    """The PNG first, then its XML: a kill in between leaves a PNG that the next run completes."""
    atomic_write_bytes(png, png_data)
    atomic_write_bytes(xml, xml_data)


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """One synth per folder at a time: an advisory lock on the folder itself (no lock file left behind)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PoolLockedError(f"another toonvision synth is writing to {folder}; wait for it to finish "
                                  "and run the command again") from None
        yield
    finally:
        os.close(fd)


def _remove_stale_temp_files(out_dir: Path) -> None:
    """Temp files of a synth that was killed mid-write (fsutil names them ``.<name>.<random>.tmp``)."""
    for stale in out_dir.glob(f".{NAME_PREFIX}_*.tmp"):
        with contextlib.suppress(OSError):
            stale.unlink()
            logger.debug("%s: removed a temp file left by an interrupted run", stale)


def _warn_about_foreign_images(out_dir: Path) -> None:
    foreign = [path for path in out_dir.iterdir()
               if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(NAME_PREFIX + "_")]
    if foreign:
        logger.warning("%s already holds %d screenshots that synth did not make (e.g. %s); the synthetic ones "
                       "are named %s_*.png and can be told apart", out_dir, len(foreign), foreign[0].name,
                       NAME_PREFIX)


def _workers(workers: int | None, count: int) -> int:
    if workers is not None:
        if workers < 1:
            raise UsageError(f"synth: workers is {workers}; use 1 or more")
        return min(workers, count)
    if count < PARALLEL_MIN_SCENES:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class _Runner:
    """Maps a scene function over indices, in order, in this process or in forked workers."""

    def __init__(self, workers: int) -> None:
        fork = "fork" in multiprocessing.get_all_start_methods()
        self._pool = (ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                          initializer=die_with_parent, initargs=(os.getpid(),))
                      if workers > 1 and fork else None)
        if self._pool is not None:
            self._pool.submit(int).result()  # fork the workers now, before a progress bar starts a thread

    def __enter__(self) -> "_Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)

    def map(self, fn: Callable[[Path, SynthConfig, int], _T], out_dir: Path, config: SynthConfig,
            indices: Sequence[int]) -> Iterator[tuple[int, _T]]:
        if self._pool is None:
            for index in indices:
                yield index, fn(out_dir, config, index)
            return
        chunk = max(1, min(16, len(indices) // 32))
        results = self._pool.map(fn, [out_dir] * len(indices), [config] * len(indices), indices, chunksize=chunk)
        yield from zip(indices, results)


def _progress(enabled: bool, total: int, what: str):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, desc=what, unit="shot", disable=not enabled or total == 0, leave=False)
