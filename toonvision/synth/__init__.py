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

Crash safety: one synth per folder at a time (an advisory lock on the folder itself). Every
file is written to a temp file beside it and renamed into place, the PNG before its XML, so a
kill leaves whole files only: at worst a PNG without its XML and temp files, which the next
run deletes. A re-run leaves files that already hold the same pixels alone, completes a PNG
whose XML is missing, and refuses (writing nothing) when a file of the same name holds other
pixels, unless ``overwrite``.

Modules, each depending only on those above it::

    specs    the Cog table, Toon animals, labels and their default weights, palettes
    config   SynthConfig, weight overrides, scene names
    scenery  street styles and their cached, empty backdrops
    draw     what one Cog or Toon looks like and how it is drawn; the nametag font
    plan     plan_scene: every random choice of a scene, no pixels
    render   render_plan / render_scene: a plan into pixels and an annotation; encode_png
    write    synthesize: workers, the folder lock, PNG + XML pairs written atomically
"""

from toonvision.constants import DEFAULT_TOON_SHARE
from toonvision.synth.config import (
    DEFAULT_COUNT,
    DEFAULT_ENTITIES,
    DEFAULT_SIZE,
    MAX_ENTITIES,
    MAX_SIZE,
    MIN_SIZE,
    NAME_PREFIX,
    SynthConfig,
    scene_name,
    with_weights,
)
from toonvision.synth.plan import PlannedEntity, ScenePlan, plan_scene
from toonvision.synth.render import Scene, encode_png, render_plan, render_scene
from toonvision.synth.scenery import (
    _BACKGROUND_VARIANTS as _BACKGROUND_VARIANTS,  # bench/bench_synth.py
)
from toonvision.synth.scenery import (
    _STYLE_NAMES as _STYLE_NAMES,  # times the backdrops on their own
)
from toonvision.synth.scenery import _backdrop as _backdrop
from toonvision.synth.scenery import _backdrop_width as _backdrop_width
from toonvision.synth.specs import COG_LABELS, DEFAULT_WEIGHTS, LABELS, RGB, TOON_LABELS
from toonvision.synth.write import PARALLEL_MIN_SCENES, SynthResult, synthesize

__all__ = [
    "COG_LABELS", "DEFAULT_COUNT", "DEFAULT_ENTITIES", "DEFAULT_SIZE", "DEFAULT_TOON_SHARE", "DEFAULT_WEIGHTS",
    "LABELS", "MAX_ENTITIES", "MAX_SIZE", "MIN_SIZE", "NAME_PREFIX", "PARALLEL_MIN_SCENES", "RGB", "TOON_LABELS",
    "PlannedEntity", "Scene", "ScenePlan", "SynthConfig", "SynthResult", "encode_png", "plan_scene",
    "render_plan", "render_scene", "scene_name", "synthesize", "with_weights",
]
