"""Rendering a plan into pixels: backdrop, sprites back to front, annotation, nametags, camera; PNG encoding."""

from __future__ import annotations

import functools
import io
import logging
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from toonvision.synth.config import SynthConfig
from toonvision.synth.draw import _font_size, _measure, _Pen, _text_mask, _text_width
from toonvision.synth.plan import PlannedEntity, ScenePlan, _Effects, plan_scene
from toonvision.synth.scenery import _backdrop, _backdrop_width
from toonvision.voc import Annotation, Box, ImageSize, VocObject

logger = logging.getLogger(__name__)

_SUPERSAMPLE = 2  # entities are drawn at twice the size and reduced: smooth edges
_GRAIN_SEED = 7  # the grain texture does not depend on the scene seed either


@dataclass(frozen=True)
class Scene:
    """A rendered screenshot, its annotation, and the nametag rectangles (never inside a box)."""

    image: Image.Image
    annotation: Annotation
    nametags: tuple[Box, ...]


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


def render_scene(config: SynthConfig, index: int) -> Scene:
    """Plan and draw scene ``index`` of ``config.seed``; pure and deterministic."""
    return render_plan(plan_scene(config, index))


def render_plan(plan: ScenePlan) -> Scene:
    """Draw a plan: backdrop, entities back to front with their shadows, nametags, then the camera."""
    height, width = plan.size
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
