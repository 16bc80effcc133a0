"""Labels become file names: the accepted and refused labels as a table, and one end to end through extract."""

from __future__ import annotations

import re

import pytest

from toonvision.labels import normalise_label
from toonvision.layout import Layout

from helpers import cli, manifest, write_shots

ACCEPTED = [
    ("cog_bb_flunky", "cog_bb_flunky"),
    ("toon_cat", "toon_cat"),
    ("with-mask", "with-mask"),  # the README promises [a-z0-9_-]+: hyphens are fine
    ("cog_lb_back-stabber", "cog_lb_back-stabber"),
    ("-rf", "-rf"),  # a leading hyphen is only a name; crops are named <label>_<n>.png inside the pool
    ("RBC", "rbc"),  # lowercased
    ("Toon_Cat", "toon_cat"),
    ("  toon_dog\t", "toon_dog"),  # labelImg's stray spaces are stripped
    ("banana2", "banana2"),
    ("123", "123"),
    ("_", "_"),
    ("a" * 100, "a" * 100),
]

REFUSED = [
    ("", "empty label"),
    ("   ", "empty label"),
    ("a" * 101, "101 characters long"),
    ("toon cat", "may only hold"),
    ("toon.cat", "may only hold"),
    (".", "may only hold"),
    ("..", "may only hold"),
    ("a/b", "may only hold"),
    ("../../outside/evil", "may only hold"),
    ("/tmp/evil", "may only hold"),
    ("a\\b", "may only hold"),
    ("toon:cat", "may only hold"),
    ("toon,cat", "may only hold"),
    ("toon+cat", "may only hold"),
    ("toon\tcat", "may only hold"),
    ("toon\x00cat", "may only hold"),
    ("toon_c\u0430t", "U+0430 CYRILLIC SMALL LETTER A"),
    ("\uff54oon_cat", "U+FF54 FULLWIDTH LATIN SMALL LETTER T"),
    ("toon_mon\u212aey", "U+212A KELVIN SIGN"),  # lowercases to ASCII 'k': checked before lower()
    ("toon\u200b_cat", "U+200B ZERO WIDTH SPACE"),
    ("caf\u00e9", "U+00E9 LATIN SMALL LETTER E WITH ACUTE"),
    ("toon\u2010cat", "U+2010 HYPHEN"),  # a Unicode hyphen that looks like '-'
]


@pytest.mark.parametrize("raw, label", ACCEPTED, ids=[repr(r)[:30] for r, _ in ACCEPTED])
def test_label_is_accepted_as(raw, label):
    assert normalise_label(raw) == label


@pytest.mark.parametrize("raw, reason", REFUSED, ids=[repr(r)[:30] for r, _ in REFUSED])
def test_label_is_refused_with_the_reason(raw, reason):
    with pytest.raises(ValueError, match=reason.replace("+", r"\+")):
        normalise_label(raw)


def test_extract_crops_a_hyphenated_label_and_refuses_a_dotted_one_naming_it(tmp_path):
    layout = Layout.from_dirs(tmp_path / "img")
    write_shots(layout.screenshots, [["with-mask", "Without_Mask", "with.mask"]])
    result = cli("--img-dir", layout.img_dir, "extract", "--workers", "1", expect=None)
    assert result.exit_code == 1
    assert re.search(r"shot000\.xml: object \d: label 'with\.mask' may only hold", result.output), result.output
    assert "Traceback" not in result.output
    assert sorted(manifest(layout)) == ["with-mask/with-mask_0.png", "without_mask/without_mask_0.png"]
    assert (layout.pool / "with-mask" / "with-mask_0.png").is_file()
