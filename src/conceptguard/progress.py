"""One progress protocol for long work: training, attacks, the bench, the world's gates."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    """Called as work advances: `what` names the task (one bar per name), `done` of `total` units.
    `info` is a short free text such as the current loss."""

    def __call__(self, what: str, done: int, total: int, info: str = "") -> None: ...


def report(progress: Progress | None, what: str, done: int, total: int, info: str = "") -> None:
    """Call `progress` when there is one (most functions take it as an optional argument)."""
    if progress is not None:
        progress(what, done, total, info)
