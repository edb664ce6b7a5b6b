"""Where the stack keeps its state and download cache, and how it reports what it does."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LOCAL = Path(__file__).resolve().parents[1]  # deploy/local
SERVICES = ("kafka", "redis", "mlflow")


@dataclass(frozen=True)
class Paths:
    """Where the stack keeps its state and its download cache."""

    state: Path
    cache: Path

    @classmethod
    def from_env(cls) -> Paths:
        """Resolve the state and cache directories from the environment."""
        state = Path(os.environ.get("HEIMDALL_STACK_DIR", REPO / ".local-stack")).resolve()
        cache = Path(os.environ.get("HEIMDALL_STACK_CACHE", REPO / ".local-stack" / "cache"))
        return cls(state=state, cache=cache.resolve())

    @property
    def secure(self) -> bool:
        """Whether this state directory holds a secured (SASL_SSL, TLS, passwords) stack."""
        return self.secrets_file.exists()

    @property
    def secrets_file(self) -> Path:
        """Generated passwords of a secured stack."""
        return self.state / "secure.json"

    @property
    def tls(self) -> Path:
        """The test CA and server certificate of a secured stack."""
        return self.state / "tls"

    def pidfile(self, service: str) -> Path:
        """The pid file of one service."""
        return self.state / f"{service}.pid"

    @property
    def ports_file(self) -> Path:
        """The remembered port assignment."""
        return self.state / "ports.json"

    @property
    def env_file(self) -> Path:
        """The file that tests and the demo source for the service addresses."""
        return self.state / "stack.env"


def log(message: str) -> None:
    """Print one lifecycle line to stderr (above the status line of a start, if one is shown)."""
    live = Waiting.live
    if live is not None and live.tty:
        print(f"\r\033[K[stack] {message}", file=sys.stderr, flush=True)
        live.redraw()
    else:
        print(f"[stack] {message}", file=sys.stderr, flush=True)


class Waiting:
    """A status line for one service while it starts: rewritten in place on a terminal.

    Elsewhere (CI logs, pytest's captured stderr) it prints a line when the wait starts, one
    every ``every_s`` seconds while it lasts, and one when it ends, so a slow start is visible
    without flooding the log.
    """

    live: Waiting | None = None  # the status line on screen, which ``log`` prints above

    def __init__(self, what: str, every_s: float = 15.0) -> None:
        """Start the clock and print the first line."""
        self.what = what
        self.every_s = every_s
        self.tty = sys.stderr.isatty()
        self.started = time.monotonic()
        self.last = self.started
        self._show(f"{what}: starting…", final=False)
        Waiting.live = self

    @property
    def elapsed(self) -> float:
        """Seconds since the wait started."""
        return time.monotonic() - self.started

    def redraw(self) -> None:
        """Show the status line again (on a terminal) after a log line went above it."""
        if self.tty:
            self._show(f"{self.what}: starting… {self.elapsed:.0f} s", final=False)

    def tick(self) -> None:
        """Report that the wait goes on (cheap; call it on every poll)."""
        now = time.monotonic()
        if self.tty and now - self.last >= 1.0:
            self.redraw()
            self.last = now
        elif not self.tty and now - self.last >= self.every_s:
            self._show(f"{self.what}: still starting after {self.elapsed:.0f} s", final=True)
            self.last = now

    def done(self, detail: str) -> None:
        """Print the closing line."""
        Waiting.live = None
        self._show(f"{self.what}: ready in {self.elapsed:.1f} s {detail}".rstrip(), final=True)

    def failed(self) -> None:
        """End the status line so that the error printed next starts on a line of its own."""
        Waiting.live = None
        if self.tty:
            print(file=sys.stderr, flush=True)

    def _show(self, text: str, *, final: bool) -> None:
        if self.tty:
            end = "\n" if final else ""
            print(f"\r\033[K[stack] {text}", end=end, file=sys.stderr, flush=True)
        elif final or text.endswith("…"):
            log(text)
