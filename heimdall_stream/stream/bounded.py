"""Bound a blocking client call that may never return, whatever timeout it was given.

librdkafka's ``send_offsets_to_transaction`` ignores its timeout while it waits for a group
coordinator (librdkafka issue 5456), and after that coordinator's broker dies it can wait for
it forever (issue 5511): the calling thread sits in a C ``cnd_wait`` that nothing in Python can
interrupt.  ``bounded_call`` runs such a call on a helper thread and gives up waiting after a
deadline (``CallHungError``); the helper and whatever it holds (the wedged client) are left to finish
on their own, so the caller must stop using that client.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class CallHungError(Exception):
    """A bounded call did not return within its deadline; the client it used is wedged.

    ``helper``: the thread still blocked in the call (alive for as long as the call is).
    """

    def __init__(self, message: str, helper: threading.Thread) -> None:
        super().__init__(message)
        self.helper = helper


def bounded_call(call: Callable[[], T], deadline_s: float, name: str) -> T:
    """``call()`` on a daemon thread: its result or exception, or ``CallHungError`` after ``deadline_s``.

    The helper is a daemon so that a call that never returns cannot keep the process alive.
    """
    outcome: dict[str, Any] = {}
    done = threading.Event()

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:  # handed to the caller unchanged
            outcome["error"] = exc
        finally:
            done.set()

    helper = threading.Thread(target=run, name=f"bounded-{name}", daemon=True)
    helper.start()
    if not done.wait(deadline_s):
        raise CallHungError(f"{name} did not return within {deadline_s:.0f} s", helper)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]  # type: ignore[no-any-return]
