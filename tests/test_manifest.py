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
