"""The REST resolver without a server: which URIs it serves, auth and TLS from MLflow's variables."""

from __future__ import annotations

import base64
import http.server
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import given
from hypothesis import strategies as st

from heimdall_stream.models import registry_rest


def test_serves_http_and_https_and_leaves_the_rest_to_the_mlflow_client(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_CLIENT_CERT_PATH", raising=False)
    assert registry_rest.supported("http://mlflow:5000") and registry_rest.supported("https://mlflow")
    for uri in ("file:///tmp/mlruns", "sqlite:///mlflow.db", "databricks", "databricks-uc"):
        assert not registry_rest.supported(uri)
    monkeypatch.setenv("MLFLOW_TRACKING_CLIENT_CERT_PATH", "/etc/client.pem")
    assert not registry_rest.supported("https://mlflow")


def test_authenticates_as_the_mlflow_client_would(monkeypatch):
    for name in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    assert "Authorization" not in registry_rest._headers()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "svc")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    assert registry_rest._headers()["Authorization"] == "Basic " + base64.b64encode(b"svc:pw").decode()
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0k")
    assert registry_rest._headers()["Authorization"] == "Bearer t0k"  # a token wins, as in MLflow


def test_tls_and_timeout_follow_the_mlflow_variables(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_INSECURE_TLS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH", raising=False)
    assert registry_rest._tls_context() is None  # the system's trust store
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    context = registry_rest._tls_context()
    assert context is not None and context.verify_mode == ssl.CERT_NONE
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    assert registry_rest._timeout() == 7.0
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "soon")
    assert registry_rest._timeout() == registry_rest.DEFAULT_TIMEOUT_S


def test_a_tracking_uri_is_printed_without_its_password():
    show = registry_rest.display_uri
    assert (
        show("https://alice:s3cret@mlflow.example:5000/path") == "https://alice:****@mlflow.example:5000/path"
    )
    assert show("http://[::1]:5000") == "http://[::1]:5000"
    assert show("https://bob:pw@[2001:db8::1]/") == "https://bob:****@[2001:db8::1]/"
    assert show("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert "s3cret" not in show("https://alice:s3cret@host")


def test_a_uri_with_credentials_is_left_to_the_mlflow_client():
    # urllib would read "alice:pw@host" as the host name; the MLflow client sends them properly.
    assert not registry_rest.supported("https://alice:pw@mlflow.example")
    assert registry_rest.supported("https://mlflow.example")


def test_credentials_in_an_error_text_are_masked():
    text = "HTTPSConnectionPool: GET https://alice:s3cret@mlflow.example/api/2.0/x failed"
    assert registry_rest.mask_credentials(text) == text.replace("s3cret", "****")


@contextmanager
def _server(handle) -> Iterator[str]:
    """An HTTP server on a free loopback port answering every GET with ``handle(handler)``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            handle(self)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_credentials_do_not_follow_a_redirect_to_another_origin(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t0k")
    seen: dict[str, str | None] = {}

    def elsewhere(handler):
        seen[handler.path.split("?")[0]] = handler.headers.get("Authorization")
        body = b'{"registered_model": {"name": "m", "latest_versions": [{"version": "3"}]}}'
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    with _server(elsewhere) as other:

        def registry(handler):
            path = handler.path.split("?")[0]
            seen[path] = handler.headers.get("Authorization")
            if path.endswith("/get"):  # the registry moved this call to another host
                handler.send_response(302)
                handler.send_header("Location", other + "/moved")
                handler.end_headers()
            else:
                elsewhere(handler)

        with _server(registry) as home:
            registry_rest._call(home, "GET", "/registered-models/get", {"name": "m"})
    assert seen[registry_rest.API + "/registered-models/get"] == "Bearer t0k"
    assert seen["/moved"] is None, "the token stayed with the registry's origin"


@given(st.sampled_from(["http", "https"]), st.sampled_from([None, 80, 443, 5000]))
def test_same_origin_is_host_scheme_and_port_or_an_https_upgrade(scheme, port):
    netloc = "mlflow.example" + (f":{port}" if port else "")
    url = f"{scheme}://{netloc}/api"
    assert registry_rest.same_origin(url, url + "/elsewhere")
    assert not registry_rest.same_origin(url, f"{scheme}://evil.example/api")
    assert not registry_rest.same_origin(url, f"{scheme}://mlflow.example:6000/api")
    assert registry_rest.same_origin("http://mlflow.example/api", "https://mlflow.example/api")
    assert not registry_rest.same_origin("https://mlflow.example/api", "http://mlflow.example/api")
