"""Progress of a long command: a line per step, a bar (or plain lines) for counted work.

On a terminal a counted step is a tqdm bar; anywhere else (CI logs, pipes, files) every line
is plain and final, never a carriage return: one when the step starts, one at each quarter of
a counted step, and one when it ends with its duration.  Everything goes to stderr, so what a
command prints on stdout (results, reports) stays clean.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm

QUARTERS = (25, 50, 75)


class Steps:
    """Says what a command is doing, step after step.

    ``start(text, total)`` ends the step in progress and begins the next one (counted when
    ``total`` is given); ``advance(n)`` counts work of the current step; ``finish()`` (or
    leaving the ``with`` block) ends the last one.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _sized_terminal(self.stream) if tty is None else tty
        self._clock = clock
        self._text = ""
        self._started = 0.0
        self._total: int | None = None
        self._done = 0
        self._quarter = 0
        self._bar: tqdm[Any] | None = None

    def start(self, text: str, total: int | None = None) -> None:
        """End the current step and begin ``text`` (with ``total`` units of work, if counted)."""
        self.finish()
        self._text, self._total, self._done, self._quarter = text, total, 0, 0
        self._started = self._clock()
        if total is not None and self.tty:
            self._bar = tqdm(total=total, desc=text, file=self.stream, leave=True, dynamic_ncols=True)
        else:
            self._line(f"{text}…" if total is None else f"{text} (0/{total})…")

    @property
    def active(self) -> bool:
        """Whether a step is in progress."""
        return bool(self._text)

    def advance(self, n: int = 1) -> None:
        """Count ``n`` units of the current step's work."""
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
            return
        if self._total:
            percent = 100 * self._done // self._total
            while self._quarter < len(QUARTERS) and percent >= QUARTERS[self._quarter]:
                self._line(f"  {self._text}: {QUARTERS[self._quarter]} % ({self._done}/{self._total})")
                self._quarter += 1

    def finish(self) -> None:
        """End the current step, if any, saying how long it took."""
        if not self._text:
            return
        if self._bar is not None:  # the bar left on screen already says it all
            self._bar.close()
            self._bar = None
        else:
            counted = f"{self._done}/{self._total}, " if self._total is not None else ""
            self._line(f"  {self._text}: done ({counted}{self._clock() - self._started:.1f} s)")
        self._text = ""

    def fail(self) -> None:
        """End the current step, if any, as failed (what failed is for the error to say)."""
        if not self._text:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._line(f"  {self._text}: failed after {self._clock() - self._started:.1f} s")
        self._text = ""

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def __enter__(self) -> Steps:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.finish()
        else:
            self.fail()


def _sized_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is a terminal with a width (a pseudo-terminal of 0 columns gets lines)."""
    try:
        return stream.isatty() and os.get_terminal_size(stream.fileno()).columns > 0
    except (OSError, ValueError, AttributeError):
        return False
