"""Toxiproxy, the fault-injecting TCP proxy between the consumer and a multi-broker cluster.

The server is built once from its Go module (``go install``, through the Go module proxy) into
the shared cache, ``<cache>/toxiproxy/<version>/toxiproxy-server``, with the ``go`` on PATH or in
``/usr/local/go/bin`` (``.ci/run`` installs Debian's ``golang-go`` when neither is; a Go older
than 1.23 builds toxiproxy v2.5.0 instead, whose API is the same for what is used here).
It runs as the stack service ``toxiproxy`` on a loopback API port and loads its proxies from a
JSON file at start, so a restart brings them back.  ``Toxiproxy`` drives it over its HTTP API:
latency, bandwidth, resets and a black hole (``timeout`` toxic) per proxy and direction.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from stacklib.paths import Paths, log
from stacklib.procs import run_or_raise, spawn

VERSION = "v2.12.0"  # needs Go >= 1.23
OLD_GO_VERSION = "v2.5.0"  # for an older Go (Debian 12's golang-go is 1.19); same API for our use
MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
BUILD_TIMEOUT_S = 900.0  # a first build on a loaded two-core machine takes minutes


def go_binary() -> str | None:
    """The ``go`` command: on PATH, else the official tarball's place (not on PATH by default)."""
    found = shutil.which("go")
    if found:
        return found
    official = Path("/usr/local/go/bin/go")
    return str(official) if os.access(official, os.X_OK) else None


def go_minor(go: str) -> int:
    """The minor release of a Go 1.x toolchain ("go version go1.26.8 linux/amd64" -> 26); 0 if unknown."""
    try:
        out = subprocess.run([go, "version"], capture_output=True, text=True, timeout=60, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    found = re.search(r"go1\.(\d+)", out)
    return int(found.group(1)) if found else 0


def ensure_server(paths: Paths) -> Path:
    """The toxiproxy server binary (``VERSION``, or ``OLD_GO_VERSION`` for a Go older than 1.23).

    Built into the cache when missing; a binary already there is used without asking for Go.
    """
    for version in (VERSION, OLD_GO_VERSION):
        cached = paths.cache / "toxiproxy" / version / "toxiproxy-server"
        if os.access(cached, os.X_OK):
            return cached
    go = go_binary()
    if go is None:
        raise RuntimeError(
            "the cluster's fault proxy is built with Go, which is missing: "
            "apt-get install golang-go, or put the official Go on PATH"
        )
    version = VERSION if go_minor(go) >= 23 else OLD_GO_VERSION
    binary = paths.cache / "toxiproxy" / version / "toxiproxy-server"
    binary.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log(f"toxiproxy: building {MODULE}@{version} with {go} (once, into the cache)")
    with tempfile.TemporaryDirectory(dir=binary.parent) as gobin:
        run_or_raise(
            f"building toxiproxy {version} with {go}",
            [go, "install", f"{MODULE}@{version}"],
            env={**os.environ, "GOBIN": gobin, "CGO_ENABLED": "0"},
            timeout=BUILD_TIMEOUT_S,
        )
        os.replace(Path(gobin) / "server", binary)  # atomic: a concurrent build never sees half a file
    log(f"toxiproxy: built in {time.monotonic() - started:.0f} s ({binary})")
    return binary


def start_toxiproxy(paths: Paths, api_port: int, proxies: list[dict[str, Any]]) -> int:
    """Start the server with ``proxies`` (name, listen, upstream) loaded from its config file."""
    binary = ensure_server(paths)
    config = paths.state / "toxiproxy.json"
    config.write_text(json.dumps([{**p, "enabled": True} for p in proxies], indent=2))
    argv = [str(binary), "-host", "127.0.0.1", "-port", str(api_port), "-config", str(config)]
    return spawn(paths, "toxiproxy", argv)


def toxiproxy_ready(api_port: int, proxies: int) -> bool:
    """The API answers and serves every proxy of its config file."""
    try:
        return len(Toxiproxy(f"http://127.0.0.1:{api_port}").proxies()) >= proxies
    except OSError:
        return False


class Toxiproxy:
    """A small client of toxiproxy's HTTP API (stdlib only)."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        """``url``: the API, e.g. ``http://127.0.0.1:8474``."""
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:  # its body says why (unknown proxy, bad toxic)
            raise RuntimeError(f"toxiproxy {method} {path}: {exc.code} {exc.read().decode()[:500]}") from exc
        return json.loads(text) if text.strip() else None

    def proxies(self) -> dict[str, Any]:
        """Every proxy by name, with its listen/upstream addresses, state and toxics."""
        return dict(self._call("GET", "/proxies"))

    def set_enabled(self, proxy: str, enabled: bool) -> None:
        """Enable or disable a proxy (disabled: connections are closed and refused)."""
        self._call("POST", f"/proxies/{proxy}", {"enabled": enabled})

    def add_toxic(
        self,
        proxy: str,
        kind: str,
        attributes: dict[str, Any],
        *,
        stream: str = "downstream",
        toxicity: float = 1.0,
        name: str | None = None,
    ) -> str:
        """Add a toxic (latency, bandwidth, timeout, reset_peer, ...) to one proxy; its name."""
        name = name or f"{kind}_{stream}"
        body = {"name": name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes}
        self._call("POST", f"/proxies/{proxy}/toxics", body)
        return name

    def remove_toxic(self, proxy: str, name: str) -> None:
        """Remove one toxic from a proxy."""
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def reset(self) -> None:
        """Enable every proxy and remove every toxic."""
        self._call("POST", "/reset")
