"""Resolving a registered model version over MLflow's REST API, without importing MLflow.

Importing the MLflow client costs a consumer about 130 MB of resident memory for good (it pulls
in pandas, pyarrow, protobuf and the rest), yet all a consumer needs from the registry at each
start and deployment is one small JSON answer: which version an alias, stage or number names,
and its tags.  ``resolve_version`` asks exactly that of an ``http(s)://`` tracking server, with
the same environment variables the MLflow client honours for authentication and TLS
(``MLFLOW_TRACKING_TOKEN``, ``MLFLOW_TRACKING_USERNAME``/``PASSWORD``,
``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH``) and its request timeout
(``MLFLOW_HTTP_REQUEST_TIMEOUT``).  Anything else (another scheme, a client certificate) is left
to the MLflow client (``supported`` says which); so is downloading, which is rare (once per
version per cache).

Errors: a registry answer that the version does not exist raises ``ModelNotFoundError`` (retrying
cannot fix it); anything else (unreachable, 5xx, garbage) raises ``RegistryRequestError``, which
the caller treats as the registry being unavailable.
"""

from __future__ import annotations

import base64
import json
import os
import re
import ssl
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from heimdall_stream.errors import ModelNotFoundError

API = "/api/2.0/mlflow"
DEFAULT_TIMEOUT_S = 120.0  # the MLflow client's own default for MLFLOW_HTTP_REQUEST_TIMEOUT
# Error codes meaning "no such model or version": final, unlike an outage.
MISSING = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


class RegistryRequestError(Exception):
    """The registry could not be asked, or gave no usable answer (transient)."""


def display_uri(tracking_uri: str) -> str:
    """The tracking URI as it may be printed: a password in it is replaced by ``****``."""
    parts = urllib.parse.urlsplit(tracking_uri)
    if parts.password is None:
        return tracking_uri
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    netloc = f"{parts.username}:****@{host}" + (f":{parts.port}" if parts.port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


_USERINFO_PASSWORD = re.compile(r"(//[^/:@\s]+):[^@\s/]+@")


def mask_credentials(text: str) -> str:
    """``text`` with the password of each ``scheme://user:password@host`` in it as ``****``."""
    return _USERINFO_PASSWORD.sub(r"\1:****@", text)


def supported(tracking_uri: str) -> bool:
    """Whether ``resolve_version`` can serve this tracking URI (else use the MLflow client).

    Not a URI with credentials in it (``https://user:password@host``): urllib would take them
    for part of the host name, where the MLflow client sends them as it should.
    """
    parts = urllib.parse.urlsplit(tracking_uri)
    return (
        parts.scheme in {"http", "https"}
        and parts.username is None
        and not os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    )


def resolve_version(
    tracking_uri: str,
    name: str,
    *,
    alias: str | None = None,
    version: str | None = None,
    stage: str | None = None,
) -> tuple[str, dict[str, str]]:
    """The version number that ``alias``, ``version`` or ``stage`` names, and its tags."""
    if alias:
        answer = _call(tracking_uri, "GET", "/registered-models/alias", {"name": name, "alias": alias})
        found = answer.get("model_version")
    elif version:
        answer = _call(tracking_uri, "GET", "/model-versions/get", {"name": name, "version": version})
        found = answer.get("model_version")
    else:
        body = {"name": name, "stages": [stage]}
        answer = _call(tracking_uri, "POST", "/registered-models/get-latest-versions", body)
        versions = answer.get("model_versions") or []
        if not versions:
            raise ModelNotFoundError(f"model {name} has no version in stage {stage!r}")
        found = versions[0]
    if not isinstance(found, dict) or "version" not in found:
        where = display_uri(tracking_uri)
        raise RegistryRequestError(f"registry {where} answered without a version: {answer!r:.200}")
    tags = {str(t.get("key")): str(t.get("value")) for t in found.get("tags") or [] if isinstance(t, dict)}
    return str(found["version"]), tags


def _call(tracking_uri: str, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
    url = tracking_uri.rstrip("/") + API + path
    data = None
    if method == "GET":
        url += "?" + urllib.parse.urlencode(params)
    else:
        data = json.dumps(params).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=_headers())
    try:
        with _opener().open(request, timeout=_timeout()) as response:
            return _json(response.read(), url)
    except urllib.error.HTTPError as exc:
        payload = _json_or_none(exc.read())
        code = (payload or {}).get("error_code", "")
        if code in MISSING:
            # The server's own words only: the caller knows which model it asked for and says so.
            raise ModelNotFoundError(str((payload or {}).get("message", code))) from exc
        raise RegistryRequestError(f"{method} {url}: HTTP {exc.code} {code}".rstrip()) from exc
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused connections, TLS errors
        raise RegistryRequestError(f"{method} {url}: {exc}") from exc


class _CredentialsStayHome(urllib.request.HTTPRedirectHandler):
    """Follows redirects, but sends the registry's credentials only to the registry's origin.

    urllib copies every header of a request to its redirect, wherever that points: a registry
    (or a proxy in front of it) redirecting to another host would be handed the token.  The
    same host, or the same host upgraded from http to https, keeps them, as in ``requests``.
    """

    def redirect_request(  # noqa: PLR0917  (urllib calls it with these six positionally)
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        """The redirected request, without ``Authorization`` when it leaves the origin."""
        redirected = super().redirect_request(req, fp, code, msg, headers, newurl)
        if redirected is not None and not same_origin(req.full_url, redirected.full_url):
            redirected.remove_header("Authorization")
        return redirected


def same_origin(url: str, redirected: str) -> bool:
    """Whether credentials meant for ``url`` may follow a redirect to ``redirected``."""
    before, after = urllib.parse.urlsplit(url), urllib.parse.urlsplit(redirected)
    default = {"http": 80, "https": 443}
    if before.hostname != after.hostname:
        return False
    if before.scheme == after.scheme:
        return (before.port or default.get(before.scheme)) == (after.port or default.get(after.scheme))
    upgrade = (before.scheme, after.scheme) == ("http", "https")
    return upgrade and before.port in (None, 80) and after.port in (None, 443)


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(
        _CredentialsStayHome(), urllib.request.HTTPSHandler(context=_tls_context())
    )


def _headers() -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": "heimdall-stream"}
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    elif user and password:
        basic = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers["Authorization"] = f"Basic {basic}"
    return headers


def _tls_context() -> ssl.SSLContext | None:
    if os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() == "true":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    cert = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
    return ssl.create_default_context(cafile=cert) if cert else None


def _timeout() -> float:
    try:
        return float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT", DEFAULT_TIMEOUT_S))
    except ValueError:
        return DEFAULT_TIMEOUT_S


def _json(raw: bytes, url: str) -> dict[str, Any]:
    payload = _json_or_none(raw)
    if payload is None:
        raise RegistryRequestError(f"{url}: not a JSON object: {raw[:200]!r}")
    return payload


def _json_or_none(raw: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(raw or b"null")
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None
