"""The pool as the stages read it: the manifest's crops whose files are still in the pool."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from toonvision.errors import PoolError
from toonvision.layout import Layout
from toonvision.manifest import is_safe_relative, load_pool


def test_deleted_pool_crops_are_left_out_with_a_warning(make_pool, caplog) -> None:
    layout, recs = make_pool({"a": 4, "b": 4})
    (layout.pool / recs[0].crop).unlink()
    with caplog.at_level(logging.WARNING, logger="toonvision.manifest"):
        kept, missing = load_pool(layout)
    assert missing == (recs[0].crop,)
    assert len(kept) == 7
    assert "no longer in the pool" in caplog.text


def test_no_manifest_says_run_extract_first(tmp_path: Path) -> None:
    with pytest.raises(PoolError, match="run `toonvision extract` first"):
        load_pool(Layout.from_dirs(tmp_path / "img"))


@pytest.mark.parametrize(
    "path, safe",
    [("cog/cog_bb_0.png", True), ("a.png", True), ("../x.png", False), ("/etc/x.png", False),
     ("a//b.png", False), ("a/./b.png", False), ("a\\b.png", False), ("", False)],
)
def test_only_paths_below_the_pool_are_safe(path: str, safe: bool) -> None:
    assert is_safe_relative(path) is safe


def test_an_older_manifest_loads_with_every_crop_active_and_no_hashes() -> None:
    from toonvision.manifest import REQUIRED_COLUMNS, parse_manifest

    text = ",".join(REQUIRED_COLUMNS) + "\ncog/cog_bb_a_0.png,cog_bb_a,cog,0,s.png,0,0,4,4,4,4,aa,bb\n"
    (record,) = parse_manifest(text)
    assert record.active and record.status == "active" and record.replaced_by == ""
    assert (record.pixels_sha256, record.source_phash, record.crop_phash) == ("", "", "")


def test_a_bad_status_is_a_pool_error() -> None:
    from toonvision.manifest import CropRecord, format_manifest, parse_manifest

    text = format_manifest([CropRecord("a/a_0.png", "a", "a", 0, "s.png", 0, 0, 1, 1, 1, 1, "x", "y")])
    with pytest.raises(PoolError, match="status 'gone'"):
        parse_manifest(text.replace(",active,", ",gone,"))


def test_retired_crops_are_left_out_of_the_pool_without_a_warning(make_pool, caplog) -> None:
    import dataclasses

    from toonvision.manifest import RETIRED, load_manifest, save_manifest

    layout, recs = make_pool({"a": 2, "b": 2})
    records = load_manifest(layout.manifest)
    records[0] = dataclasses.replace(records[0], status=RETIRED, replaced_by=records[1].crop)
    save_manifest(layout.manifest, records)
    (layout.pool / recs[0].crop).unlink()  # a retired crop's file may go too: nothing is missing
    with caplog.at_level(logging.WARNING, logger="toonvision.manifest"):
        kept, missing = load_pool(layout)
    assert [r.crop for r in kept] == [r.crop for r in recs[1:]] and missing == ()
    assert "no longer in the pool" not in caplog.text
    assert load_manifest(layout.manifest)[0].replaced_by == recs[1].crop
