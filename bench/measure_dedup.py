"""Choose the near-duplicate hash threshold: true and false positive rates on synthetic frame sequences.

Each synthetic scene (toonvision.synth) is rendered again with small camera or pose changes
(a pan of 4-32 px, entities walking, a later frame, a little more light) and re-encoded
(JPEG, resized, shifted, border cropped): those are the near-duplicates. Every pair of
different scenes is a negative. Prints, per Hamming threshold, the share of near-duplicate
pairs found (TPR) and of unrelated pairs wrongly paired (FPR), for screenshots and for crops
(the same entity across a scene's variants against crops of other scenes), plus the time of
clustering 100,000 hashes.

    python3 bench/measure_dedup.py --scenes 70 [--compare]

``--compare`` also measures the screenshot hashes that were not chosen: dHash (Pillow bilinear,
and Lanczos as ``imagehash.dhash``), dHash over rows and columns (128 bits) and ``imagehash``'s
average hash, re-implemented here on Pillow and NumPy.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import itertools
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from toonvision.dedup import hamming, near_pairs, phash  # noqa: E402
from toonvision.synth import SynthConfig, plan_scene, render_plan  # noqa: E402
from toonvision.synth.scenery import _backdrop_width  # noqa: E402


def _shift_entity(entity, dx):
    b, t = entity.box, entity.nametag
    return dataclasses.replace(entity, box=(b[0] + dx, b[1], b[2] + dx, b[3]),
                               nametag=(t[0] + dx, t[1], t[2] + dx, t[3]))


def _pan(plan, dx):
    new = min(max(plan.pan + dx, 0), _backdrop_width(plan.size.width) - plan.size.width)
    moved = new - plan.pan
    return dataclasses.replace(plan, pan=new, entities=tuple(_shift_entity(e, -moved) for e in plan.entities))


def _walk(plan, k, dx):
    entities = list(plan.entities)
    if entities:
        entities[k % len(entities)] = _shift_entity(entities[k % len(entities)], dx)
    return dataclasses.replace(plan, entities=tuple(entities))


def _light(plan, factor):
    effects = dataclasses.replace(plan.effects, gains=tuple(g * factor for g in plan.effects.gains))
    return dataclasses.replace(plan, effects=effects)


def _jpeg(image, quality):
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


PLAN_VARIANTS = {
    "pan 4 px": lambda p: _pan(p, 4),
    "pan 12 px": lambda p: _pan(p, 12),
    "pan 32 px": lambda p: _pan(p, 32),
    "one entity walks 6 px": lambda p: _walk(p, 0, 6),
    "a later frame: pan 6, two entities walk 8": lambda p: _walk(_walk(_pan(p, 6), 0, 8), 1, -8),
    "4% more light": lambda p: _light(p, 1.04),
}
IMAGE_VARIANTS = {
    "JPEG q60": lambda i: _jpeg(i, 60),
    "JPEG q30": lambda i: _jpeg(i, 30),
    "resized to 1/2": lambda i: i.resize((i.width // 2, i.height // 2), Image.Resampling.BILINEAR),
    "resized to 3/4 + JPEG q80": lambda i: _jpeg(i.resize((i.width * 3 // 4, i.height * 3 // 4)), 80),
    "shifted 5x3 px": lambda i: Image.fromarray(np.roll(np.asarray(i), (3, 5), axis=(0, 1))),
    "3% border cropped, resized back": lambda i: i.crop((12, 9, i.width - 12, i.height - 9)).resize(i.size),
}


def _dhash(image, resample=Image.Resampling.BILINEAR):
    grey = np.asarray(image.convert("L").resize((9, 8), resample), dtype=np.int16)
    return (grey[:, 1:] > grey[:, :-1]).ravel()


def _dhash_rows_columns(image):
    grey = np.asarray(image.convert("L").resize((9, 9), Image.Resampling.BILINEAR), dtype=np.int16)
    return np.concatenate([(grey[:-1, 1:] > grey[:-1, :-1]).ravel(), (grey[1:, :-1] > grey[:-1, :-1]).ravel()])


def _ahash(image):
    grey = np.asarray(image.convert("L").resize((8, 8), Image.Resampling.LANCZOS), dtype=np.float64)
    return (grey > grey.mean()).ravel()


OTHER_HASHES = {
    "dHash, Pillow bilinear": _dhash,
    "dHash as imagehash.dhash (Lanczos)": lambda i: _dhash(i, Image.Resampling.LANCZOS),
    "dHash rows and columns, 128 bits": _dhash_rows_columns,
    "aHash as imagehash.average_hash": _ahash,
}


def rates(positives, negatives, thresholds):
    pos, neg = np.array(positives), np.array(negatives)
    for t in thresholds:
        print(f"  threshold {t:2d}: TPR {(pos <= t).mean():.3f}  FPR {(neg <= t).mean():.5f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=70)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--compare", action="store_true", help="also measure the hashes that were not chosen")
    args = parser.parse_args(argv)
    config = SynthConfig(count=args.scenes, seed=args.seed)
    start = time.perf_counter()
    shots: list[tuple[int, str, str]] = []  # scene, variant, hash
    images: list[tuple[int, str, Image.Image]] = []  # kept for --compare
    crops: list[tuple[int, int, str]] = []  # scene, entity, hash: plan variants keep the entity order
    hash_time = []
    for s in range(args.scenes):
        plan = plan_scene(config, s)
        scene = render_plan(plan)
        t = time.perf_counter()
        shots.append((s, "original", phash(scene.image)))
        if args.compare:
            images.append((s, "original", scene.image))
        hash_time.append(time.perf_counter() - t)
        boxes = [tuple(int(v) for v in o.box.rounded()) for o in scene.annotation.objects]
        for e, box in enumerate(boxes):
            crops.append((s, e, phash(scene.image.crop(box))))
        for kind, change in PLAN_VARIANTS.items():
            variant = render_plan(change(plan))
            shots.append((s, kind, phash(variant.image)))
            if args.compare:
                images.append((s, kind, variant.image))
            if len(variant.annotation.objects) == len(boxes):
                for e, obj in enumerate(variant.annotation.objects):
                    crops.append((s, e, phash(variant.image.crop(tuple(int(v) for v in obj.box.rounded())))))
        for kind, change in IMAGE_VARIANTS.items():
            changed = change(scene.image)
            shots.append((s, kind, phash(changed)))
            if args.compare:
                images.append((s, kind, changed))
    print(f"{args.scenes} scenes x {1 + len(PLAN_VARIANTS) + len(IMAGE_VARIANTS)} frames rendered and hashed in "
          f"{time.perf_counter() - start:.0f} s; pHash {1000 * float(np.median(hash_time)):.1f} ms per 800x600 "
          "screenshot")
    original = {s: h for s, kind, h in shots if kind == "original"}
    by_kind: dict[str, list[int]] = {}
    for s, kind, h in shots:
        if kind != "original":
            by_kind.setdefault(kind, []).append(hamming(h, original[s]))
    negatives = [hamming(a[2], b[2]) for a, b in itertools.combinations(shots, 2) if a[0] != b[0]]
    print(f"screenshots: {sum(map(len, by_kind.values()))} near-duplicate pairs, {len(negatives)} unrelated pairs "
          f"(closest {min(negatives)} bits, 0.1st percentile {np.percentile(negatives, 0.1):.0f}, median "
          f"{np.median(negatives):.0f})")
    for kind, distances in by_kind.items():
        print(f"  {kind:44s} max {max(distances):2d} median {np.median(distances):4.1f}")
    rates([d for ds in by_kind.values() for d in ds], negatives, range(4, 13))
    pos = [hamming(a[2], b[2]) for a, b in itertools.combinations(crops, 2) if a[:2] == b[:2]]
    neg = [hamming(a[2], b[2]) for a, b in itertools.combinations(crops, 2) if a[0] != b[0]]
    print(f"crops: {len(pos)} pairs of one entity across a scene's frames, {len(neg)} pairs of other scenes")
    rates(pos, neg, range(0, 11))
    for name, function in (OTHER_HASHES.items() if args.compare else ()):
        bits = [(s, kind, function(image)) for s, kind, image in images]
        first = {s: b for s, kind, b in bits if kind == "original"}
        pos = [int((b != first[s]).sum()) for s, kind, b in bits if kind != "original"]
        neg = [int((a[2] != b[2]).sum()) for a, b in itertools.combinations(bits, 2) if a[0] != b[0]]
        size = bits[0][2].size
        print(f"{name}: closest unrelated pair {min(neg)} of {size} bits")
        rates(pos, neg, range(size // 16, size // 5 + 1, max(1, size // 64)))
    rng = np.random.default_rng(0)
    values = [f"{int(v):016x}" for v in rng.integers(0, 2**63, 100_000, dtype=np.uint64)]
    t = time.perf_counter()
    found = near_pairs(values, 8)
    print(f"100,000 random hashes clustered at threshold 8 in {time.perf_counter() - t:.1f} s ({len(found)} pairs)")


if __name__ == "__main__":
    main()
