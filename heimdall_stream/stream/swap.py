"""The model set in force, and the one offered to replace it at the next batch boundary.

The control plane loads and warms up a new ``ModelSet`` on its own thread and ``offer``s it;
the stream loop calls ``take_offer`` between two batches, so a swap never splits a batch and
no in-flight capture is lost.  The batch processor reads ``current`` once per batch.
"""

from __future__ import annotations

import threading

from heimdall_stream.models.routing import ModelSet


class ModelSwap:
    """Holds the current model set and at most one pending replacement."""

    def __init__(self, initial: ModelSet) -> None:
        self._current = initial
        self._lock = threading.Lock()
        self._offered: tuple[ModelSet, threading.Event] | None = None

    def current(self) -> ModelSet:
        """The model set in force."""
        return self._current

    def offer(self, models: ModelSet) -> threading.Event:
        """Hand over a new model set; the event is set once it is in force."""
        swapped = threading.Event()
        with self._lock:
            self._offered = (models, swapped)
        return swapped

    def withdraw(self, swapped: threading.Event) -> bool:
        """Take back the offer behind ``swapped`` if the stream loop has not taken it yet.

        False when it was taken (it is in force, or about to be once the loop's bookkeeping
        sets the event) or superseded by a newer offer.
        """
        with self._lock:
            if self._offered is not None and self._offered[1] is swapped:
                self._offered = None
                return True
        return False

    def take_offer(self) -> tuple[ModelSet, threading.Event] | None:
        """Put the offered set in force (between batches).

        Returns the set it replaced and the offer's event, which the caller sets once its own
        bookkeeping (metrics, readiness) shows the new set; None when nothing was offered.
        """
        with self._lock:
            offered, self._offered = self._offered, None
        if offered is None:
            return None
        models, swapped = offered
        previous, self._current = self._current, models
        return previous, swapped
