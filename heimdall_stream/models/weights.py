"""The one rule for traffic weights, shared by the control protocol and the routing it feeds.

A deployment is verified with it before anything is loaded, and a ``ModelSet`` checks it again
when it is built, so a set that reaches the router always splits the whole traffic.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from heimdall_stream.errors import ControlMessageError

# Weights are decimal shares typed by operators (0.9 + 0.1): their float sum misses 1 by ulps.
SUM_TOLERANCE = 1e-6


def check_weights(weights: Iterable[float]) -> None:
    """Raise ``ControlMessageError`` (reason ``malformed``) unless each weight is in [0, 1], sum 1."""
    values = list(weights)
    # ``not (0 <= w <= 1)`` is also true of NaN, which would otherwise slip through both tests.
    if any(not (0.0 <= w <= 1.0) for w in values) or not math.isclose(
        sum(values), 1.0, abs_tol=SUM_TOLERANCE
    ):
        raise ControlMessageError(f"weights must be in [0, 1] and sum to 1, got {values}", reason="malformed")
