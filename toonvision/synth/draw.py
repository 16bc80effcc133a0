"""Drawing one Cog or Toon in its own units (feet centre at (0, 0), y upwards), and the nametag font."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from toonvision.constants import SUITS
from toonvision.synth.specs import (
    _BLACK,
    _HAND_COLORS,
    _TIE_COLORS,
    _TOON_HEADS,
    _WHITE,
    RGB,
    _CogSpec,
    _HeadShape,
    _mix,
    _shade,
)


@dataclass(frozen=True)
class _CogLook:
    """One Cog as planned: its name's spec, pose, suit and head colour (jittered), and level."""

    label: str
    spec: _CogSpec
    suit: str
    pose: str
    mirror: bool
    suit_color: RGB
    head_color: RGB
    level: int

    def draw(self, pen: _Pen) -> None:
        _draw_cog(pen, self)

    def nametag(self) -> tuple[tuple[str, ...], RGB]:
        return (self.spec.display, SUITS[self.suit], f"Level {self.level}"), (20, 20, 20)


@dataclass(frozen=True)
class _ToonLook:
    """One Toon as planned: animal, pose, colours, clothes, proportions and name."""

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

    def draw(self, pen: _Pen) -> None:
        _draw_toon(pen, self)

    def nametag(self) -> tuple[tuple[str, ...], RGB]:
        return (self.name,), self.name_color


# --------------------------------------------------------------------------------------------
# Drawing, in body units: feet centre at (0, 0), y upwards
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
    for a, b in zip(points, list(points[1:]) + [points[0]], strict=True):
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


@dataclass(frozen=True)
class _HeadFrame:
    """Where one Toon's head is drawn: its centre line, muzzle line, chin, size, pose and fur shades."""

    cx: float
    mx: float
    y0: float
    w: float
    h: float
    pose: str
    colors: dict[str, RGB]


def _draw_toon_head(pen: _Pen, look: _ToonLook, y0: float) -> None:
    """Head and ears: the animal is told by these shapes (its row of ``_TOON_HEADS``), never by colour."""
    spec = _TOON_HEADS[look.animal]
    side, back = look.pose == "side", look.pose == "back"
    w, h = 0.36 * look.head * spec.stretch[0], 0.34 * look.head * spec.stretch[1]
    cx = 0.02 if side else 0.0
    colors = {"fur": look.fur, "dark": _shade(look.fur, 0.72), "light": _mix(look.fur, _WHITE, 0.55),
              "pink": _mix(look.fur, (250, 160, 180), 0.6)}
    frame = _HeadFrame(cx, cx + (0.45 * w if side else 0.0), y0, w, h, look.pose, colors)
    sides = (1.0,) if side else (-1.0, 1.0)
    _draw_head_shapes(pen, spec.ears, frame, sides)
    centre, rx, ry = spec.head
    pen.ellipse(cx, y0 + centre * h, rx * w, ry * h, look.fur)
    _draw_head_shapes(pen, spec.crown, frame, sides)
    if spec.cap is not None:
        pen.poly(_clip(_ellipse_points(w, h, y0), 1, y0 + spec.cap * h, keep_above=True), colors["dark"],
                 outline=False)
    if not back:
        _draw_toon_eyes(pen, cx, y0 + spec.eye_y * h, w, h, side)
        _draw_head_shapes(pen, spec.snout, frame, (1.0,))
        _draw_head_shapes(pen, spec.marks, frame, sides)
    _draw_head_shapes(pen, spec.over, frame, sides)


def _draw_toon_eyes(pen: _Pen, cx: float, eye_y: float, w: float, h: float, side: bool) -> None:
    eyes = (cx + 0.28 * w,) if side else (cx - 0.16 * w, cx + 0.16 * w)
    for ex in eyes:
        pen.ellipse(ex, eye_y, 0.1 * w, 0.14 * h, _WHITE)
        pen.ellipse(ex + (0.03 * w if side else 0), eye_y - 0.02 * h, 0.05 * w, 0.08 * h, _BLACK, outline=False)


def _draw_head_shapes(pen: _Pen, shapes: Sequence[_HeadShape], frame: _HeadFrame, sides: Sequence[float]) -> None:
    """Each shape that shows in this pose, side by side: all shapes of the left side, then of the right."""
    for s in sides:
        for shape in shapes:
            if frame.pose in shape.poses:
                _draw_head_shape(pen, shape, frame, s)


def _draw_head_shape(pen: _Pen, shape: _HeadShape, frame: _HeadFrame, s: float) -> None:
    w, h, side = frame.w, frame.h, frame.pose == "side"
    x = shape.side_x if side and shape.side_x is not None else shape.x
    base = frame.mx if shape.at == "muzzle" else frame.cx
    anchor = base + s * x * w + (shape.side_dx * w if side else 0.0)
    points = [(anchor + s * px * w + qx * w, frame.y0 + py * h) for px, qx, py in shape.points]
    color = frame.colors[shape.color] if isinstance(shape.color, str) else shape.color
    if shape.kind == "ellipse":
        (centre_x, centre_y), = points
        rx, ry = shape.radii
        pen.ellipse(centre_x, centre_y, rx * w, ry * (w if shape.ry_in_w else h), color, outline=shape.outline)
    elif shape.kind == "poly":
        pen.poly(points, color, outline=shape.outline)
    else:
        pen.line(points, color, shape.width)


# --------------------------------------------------------------------------------------------
# Nametag text
# --------------------------------------------------------------------------------------------

def _font_size(entity_height: int, frame_height: int) -> int:
    """Nametags shrink with distance, but far more slowly than the entities do."""
    return max(5, round((5 + entity_height / 60) * min(1.0, frame_height / 600)))


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
