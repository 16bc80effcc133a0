"""Progress bars: a tqdm bar when the caller asks for one, otherwise a bar that does nothing.

The caller decides (the CLI asks only on a terminal and never with --quiet), so library code
can update a bar unconditionally.
"""

from __future__ import annotations

from typing import Protocol

from tqdm import tqdm


class Bar(Protocol):
    """The part of tqdm's interface the stages use."""

    def update(self, n: int = 1) -> object: ...
    def set_postfix_str(self, s: str = "") -> object: ...
    def close(self) -> object: ...


class NoBar:
    """A progress bar that shows nothing."""

    def update(self, n: int = 1) -> None: ...
    def set_postfix_str(self, s: str = "") -> None: ...
    def close(self) -> None: ...


def progress_bar(enabled: bool, total: int, desc: str, unit: str, initial: int = 0) -> Bar:
    """A tqdm bar of ``total`` ``unit``s starting at ``initial`` when ``enabled``, else a :class:`NoBar`."""
    if not enabled:
        return NoBar()
    return tqdm(total=total, initial=initial, desc=desc, unit=unit)
