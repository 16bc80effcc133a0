"""Planning a scene: every random choice (street, entities, poses, places, nametags, lighting), no pixels."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from toonvision.constants import HW
from toonvision.synth.config import SynthConfig, scene_name
from toonvision.synth.draw import _CogLook, _font_size, _measure, _text_width, _ToonLook
from toonvision.synth.scenery import (
    _BACKGROUND_VARIANTS,
    _STYLE_NAMES,
    _backdrop_width,
    _horizon,
)
from toonvision.synth.specs import (
    _COG_SPECS,
    _COGS,
    _FUR,
    _NAME_COLORS,
    _NAME_PARTS,
    _SHOES,
    _SUIT_COLORS,
    _jitter,
    _random_color,
)

logger = logging.getLogger(__name__)

_PLACEMENT_TRIES = 40
_MAX_OCCLUDED = 0.35  # at most this share of a box may lie behind boxes in front of it
_GRAIN_MARGIN = 64  # each entity's grain starts this far, at most, into the shared grain texture


@dataclass(frozen=True)
class PlannedEntity:
    """One Cog or Toon of a plan: its label, where it stands and where its nametag floats."""

    label: str
    pose: str  # front, side or back
    box: tuple[int, int, int, int]  # left, top, right, bottom (exclusive), before occlusion
    nametag: tuple[int, int, int, int]
    foot: int  # the row it stands on: larger is nearer, drawn later
    look: _CogLook | _ToonLook
    blur: float  # Gaussian radius in pixels: focus and motion
    noise: float  # standard deviation of the grain on it, in grey levels
    grain_offset: tuple[int, int]  # where its grain is cut from the shared grain texture


@dataclass(frozen=True)
class _Effects:
    """Whole-frame camera effects: lighting and JPEG compression (entities get their own blur and grain)."""

    gains: tuple[float, float, float]
    gamma: float
    shade: float  # strength of the side light on entities
    light_from_left: bool
    jpeg_quality: int  # 0 = no JPEG round trip


@dataclass(frozen=True)
class ScenePlan:
    """Every random choice of one scene; :func:`render_plan` turns it into pixels."""

    name: str
    size: HW
    style: str
    variant: int
    pan: int
    flip: bool
    entities: tuple[PlannedEntity, ...]  # back to front
    effects: _Effects

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(entity.label for entity in self.entities)


def plan_scene(config: SynthConfig, index: int) -> ScenePlan:
    """Choose everything about scene ``index``: deterministic for (config, index), no pixels drawn."""
    rng = np.random.default_rng([config.seed, index])
    height, width = config.size
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
        size=config.size,
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
