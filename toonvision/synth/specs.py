"""What each label looks like and how often it appears: the Cog table, the Toon head table, label weights, palettes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

RGB = tuple[int, int, int]

_RARE_COG_WEIGHT = 0.3  # the two highest Cogs of each suit were rare in the original data


class _Draws(Protocol):
    """A random source with numpy's ``integers``: ``np.random.Generator`` or the backdrops' ``scenery._Rand``."""

    def integers(self, low: int, high: int | None = None, size: int | None = None) -> Any: ...


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

_WHITE: RGB = (244, 244, 244)
_BLACK: RGB = (24, 22, 24)
_BEAK: RGB = (250, 160, 30)
_ANTLER: RGB = (120, 84, 52)
_PINK_NOSE: RGB = (230, 110, 130)

_POSES = ("front", "side", "back")
_FRONT, _SIDE, _NOT_BACK = ("front",), ("side",), ("front", "side")


@dataclass(frozen=True)
class _HeadShape:
    """One ellipse, polygon or line of a Toon's head, in head widths ``w`` across and head heights ``h`` up.

    It hangs from an anchor ``base + s*x*w``, moved ``side_dx*w`` forwards in side view, where ``base`` is the
    head's centre line (or the muzzle's: ``at="muzzle"``) and ``s`` is -1 or 1 for the side it is on (1 for a
    shape drawn once); each point ``(px, qx, py)`` then lies at ``anchor + s*px*w + qx*w``, ``y0 + py*h``.
    """

    kind: str  # "ellipse" (its one point is the centre), "poly" or "line"
    points: tuple[tuple[float, float, float], ...]
    color: str | RGB = "fur"  # "fur", "dark", "light" or "pink": shades of the Toon's fur; or a fixed colour
    x: float = 0.0
    side_x: float | None = None  # x in side view, where it differs
    side_dx: float = 0.0
    at: str = "head"
    radii: tuple[float, float] = (0.0, 0.0)  # ellipse: across in w, up in h (in w as well if ry_in_w)
    ry_in_w: bool = False
    width: float = 0.0  # line width, in body units
    outline: bool = True
    poses: tuple[str, ...] = _POSES  # drawn in these poses only

    def __post_init__(self) -> None:
        if self.kind not in ("ellipse", "poly", "line") or self.at not in ("head", "muzzle"):
            raise ValueError(f"head shape: unknown kind {self.kind!r} or anchor {self.at!r}")
        if (self.kind == "ellipse") != (len(self.points) == 1) or not set(self.poses) <= set(_POSES):
            raise ValueError(f"head shape: an ellipse has one point (its centre), others more; poses {_POSES}")
        if isinstance(self.color, str) and self.color not in ("fur", "dark", "light", "pink"):
            raise ValueError(f"head shape: unknown shade {self.color!r}")


def _ellipse(x: float, y: float, radii: tuple[float, float], color: str | RGB = "fur", **more: Any) -> _HeadShape:
    return _HeadShape("ellipse", ((0.0, 0.0, y),), color, x=x, radii=radii, **more)


def _poly(points: tuple[tuple[float, float, float], ...], color: str | RGB = "fur", **more: Any) -> _HeadShape:
    return _HeadShape("poly", points, color, **more)


def _line(points: tuple[tuple[float, float, float], ...], color: str | RGB, width: float, **more: Any
          ) -> _HeadShape:
    return _HeadShape("line", points, color, width=width, **more)


@dataclass(frozen=True)
class _ToonHead:
    """What tells one animal apart, in the order it is drawn: shapes, never colour (fur colour is random)."""

    stretch: tuple[float, float] = (1.0, 1.0)  # head width and height against the common head
    ears: tuple[_HeadShape, ...] = ()  # behind the head, once per side that shows, from every pose
    head: tuple[float, float, float] = (0.5, 0.5, 0.5)  # the head ellipse: centre height (h), radii (w, h)
    crown: tuple[_HeadShape, ...] = ()  # on the head, once per side, from every pose
    cap: float | None = None  # the top of the head from this height (h) up, in dark fur
    eye_y: float = 0.6  # (h)
    snout: tuple[_HeadShape, ...] = ()  # after the eyes, once; not seen from the back
    marks: tuple[_HeadShape, ...] = ()  # after the snout, once per side; not seen from the back
    over: tuple[_HeadShape, ...] = ()  # in front of it all, once per side, from every pose


def _muzzle(size: tuple[float, float], side_dx: float = 0.12) -> tuple[_HeadShape, ...]:
    """A light muzzle with a black nose on it."""
    return (_ellipse(0.0, 0.25, size, "light", at="muzzle", side_dx=side_dx),
            _ellipse(0.0, 0.32, (0.07, 0.05), _BLACK, at="muzzle", side_dx=0.25, outline=False))


_NOSE = _ellipse(0.0, 0.35, (0.05, 0.04), _PINK_NOSE, at="muzzle", side_dx=0.1, outline=False)
_WHISKERS = (_line(((0.1, 0.0, 0.32), (0.45, 0.0, 0.38)), "dark", 0.006, at="muzzle"),
             _line(((0.1, 0.0, 0.28), (0.45, 0.0, 0.24)), "dark", 0.006, at="muzzle"))

_TOON_HEADS: dict[str, _ToonHead] = {
    "bear": _ToonHead(
        ears=(_ellipse(0.36, 0.92, (0.17, 0.17), side_dx=-0.1, ry_in_w=True),),
        snout=_muzzle((0.18, 0.13))),
    "cat": _ToonHead(
        ears=(_poly(((0.0, -0.18, 0.75), (0.0, 0.18, 0.75), (0.1, 0.0, 1.28)), x=0.3, side_dx=-0.1),),
        snout=(_NOSE,), marks=_WHISKERS),
    "crocodile": _ToonHead(
        crown=(_ellipse(0.25, 0.98, (0.17, 0.15), side_dx=0.05),),  # the eyes' bumps
        eye_y=0.78,
        snout=(_poly(((0.2, 0.0, 0.08), (1.05, 0.0, 0.12), (1.1, 0.0, 0.42), (0.25, 0.0, 0.55)), poses=_SIDE),
               _ellipse(0.0, 0.25, (0.55, 0.24), "light", poses=_FRONT),
               _line(((-0.4, 0.0, 0.22), (0.4, 0.0, 0.22)), "dark", 0.01, poses=_FRONT))),
    "deer": _ToonHead(
        stretch=(0.85, 1.0),
        ears=(_line(((0.0, 0.0, 0.9), (0.12, 0.0, 1.45)), _ANTLER, 0.025, x=0.22, side_dx=-0.1),
              _line(((0.06, 0.0, 1.18), (0.3, 0.0, 1.3)), _ANTLER, 0.02, x=0.22, side_dx=-0.1),
              _ellipse(0.55, 0.72, (0.22, 0.08), side_dx=-0.2, ry_in_w=True)),
        snout=(_NOSE,)),
    "dog": _ToonHead(
        snout=_muzzle((0.22, 0.16)),
        over=(_ellipse(0.48, 0.45, (0.15, 0.36), "dark", side_dx=-0.35),)),  # floppy ears
    "duck": _ToonHead(
        snout=(_ellipse(0.55, 0.35, (0.3, 0.09), _BEAK, poses=_SIDE),
               _ellipse(0.0, 0.3, (0.36, 0.12), _BEAK, poses=_FRONT))),
    "horse": _ToonHead(
        stretch=(0.78, 1.3),
        ears=(_poly(((-0.3, -0.08, 0.85), (-0.3, 0.08, 0.85), (-0.25, 0.0, 1.12)), x=1.0, side_x=0.12),),
        cap=0.82,  # the mane
        snout=_muzzle((0.3, 0.22))),
    "monkey": _ToonHead(
        ears=(_ellipse(0.55, 0.55, (0.2, 0.2), side_dx=-0.35, ry_in_w=True),
              _ellipse(0.55, 0.55, (0.11, 0.11), "light", side_dx=-0.35, ry_in_w=True, outline=False)),
        snout=(_ellipse(0.0, 0.35, (0.35, 0.3), "light", side_dx=0.2, outline=False),
               *_muzzle((0.15, 0.1), side_dx=0.0))),
    "mouse": _ToonHead(
        ears=(_ellipse(0.42, 1.02, (0.3, 0.3), side_dx=-0.15, ry_in_w=True),
              _ellipse(0.42, 1.02, (0.18, 0.18), "pink", side_dx=-0.15, ry_in_w=True, outline=False)),
        head=(0.45, 0.45, 0.45),
        snout=(_NOSE,)),
    "pig": _ToonHead(
        ears=(_poly(((0.0, -0.14, 0.8), (0.0, 0.14, 0.8), (0.2, 0.0, 1.05)), "pink", x=0.36, side_dx=-0.1),),
        head=(0.45, 0.53, 0.45),
        snout=(_ellipse(0.0, 0.32, (0.13, 0.13), "pink", at="muzzle", poses=_SIDE),
               _ellipse(0.0, 0.32, (0.2, 0.13), "pink", at="muzzle", poses=_FRONT)),
        marks=(_ellipse(0.07, 0.32, (0.035, 0.05), "dark", outline=False, poses=_FRONT),)),  # nostrils
    "rabbit": _ToonHead(
        stretch=(0.85, 1.0),
        ears=(_ellipse(0.2, 1.35, (0.13, 0.55), side_dx=-0.12),
              _ellipse(0.2, 1.35, (0.06, 0.42), "pink", side_dx=-0.12, outline=False, poses=_NOT_BACK)),
        snout=(_NOSE,)),
}
"""Every Toon animal's head, in the order of the original classes file."""

_ANIMALS = tuple(_TOON_HEADS)

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


def _random_color(rng: np.random.Generator) -> RGB:
    """A clothing colour: any hue, from dull and dark to bright."""
    hue, sat, val = float(rng.random()), float(rng.uniform(0.15, 0.95)), float(rng.uniform(0.25, 0.98))
    i = int(hue * 6) % 6
    f = hue * 6 - int(hue * 6)
    p, q, t = val * (1 - sat), val * (1 - f * sat), val * (1 - (1 - f) * sat)
    r, g, b = ((val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q))[i]
    return round(r * 255), round(g * 255), round(b * 255)


def _jitter(rng: _Draws, color: RGB, amount: int) -> RGB:
    shift = rng.integers(-amount, amount + 1, 3)
    return tuple(int(min(255, max(0, c + s))) for c, s in zip(color, shift, strict=True))  # type: ignore[return-value]


def _shade(color: RGB, factor: float) -> RGB:
    r, g, b = (round(c * factor) for c in color)
    return min(255, max(0, r)), min(255, max(0, g)), min(255, max(0, b))


def _mix(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b, strict=True))  # type: ignore[return-value]
