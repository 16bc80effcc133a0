"""Streets: the styles of the six ToonTown districts and their cached, empty backdrops."""

from __future__ import annotations

import functools
import itertools
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from toonvision.synth.specs import RGB, _jitter, _mix, _shade

_BACKGROUND_VARIANTS = 4  # cached backdrops per street style
_BACKDROP_PAN = 0.25  # backdrops are this much wider than the frame; each scene pans over them
_STYLE_SEED = 2_021_1103  # backdrops do not depend on the scene seed


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
        for r, (y0, y1) in enumerate(itertools.pairwise(rows)):
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
                for k, (c0, c1) in enumerate(itertools.pairwise(columns)):
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
