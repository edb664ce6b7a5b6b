"""Start and stop the local service stack: Apache Kafka (KRaft), Redis and an MLflow server.

There is no Docker engine on the machines this project is developed and tested on, so the
stack is made of plain processes:

* Kafka 4.x, single node, combined broker + controller, from the official jars on Maven
  Central (``deploy/local/kafka/pom.xml``), run with Java 17;
* Debian's ``redis-server``, without persistence;
* ``mlflow server`` with a sqlite backend and a local artifact root.

With ``--secure`` (or ``HEIMDALL_STACK_SECURE=1``) the state directory gets a secured stack
instead: a test CA and a server certificate are generated with ``openssl`` (valid 30 days, SAN
127.0.0.1 and localhost), Kafka listens only on SASL_SSL with SCRAM-SHA-512 users created at
format time, and Redis speaks only TLS and requires a password.  Random passwords are kept in
``secure.json`` (mode 600); ``stack.env`` then carries every setting a client needs.  Use a
separate state directory for it (``HEIMDALL_STACK_DIR``): a broker formatted without SCRAM users
cannot be secured in place.

Every service binds a loopback port that is chosen once (free port, or the one given in
``HEIMDALL_STACK_<SERVICE>_PORT``) and remembered in the state directory, so that a restart
finds Kafka's data again at the same address.  ``up`` waits until each service really
answers (Kafka: a metadata request; Redis: PING; MLflow: /health) and writes the addresses to
``stack.env``.  ``up`` is idempotent; ``down`` stops only the processes this script started
(checked by pid *and* command line) and waits until their ports are free.

Usage::

    python deploy/local/stack.py up [--secure] [kafka|redis|mlflow ...]
    python deploy/local/stack.py down [SERVICE ...]
    python deploy/local/stack.py kill SERVICE        # SIGKILL, for fault-injection tests
    python deploy/local/stack.py status
    python deploy/local/stack.py env                 # print the env file

The state directory is ``$HEIMDALL_STACK_DIR`` (default ``<repo>/.local-stack``); the Kafka
jars are cached in ``$HEIMDALL_STACK_CACHE`` (default ``<repo>/.local-stack/cache``) so several
state directories share one download.  Only the standard library is needed, except for the
Kafka readiness check, which uses confluent-kafka when it is importable.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SERVICES = ("kafka", "redis", "mlflow")
# Generous: it only bounds a hang. A loaded or slow machine can take minutes to start a JVM.
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0


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
    """Print one lifecycle line to stderr."""
    print(f"[stack] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- ports


def free_port() -> int:
    """Ask the kernel for a free loopback port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def load_ports(paths: Paths) -> dict[str, int]:
    """Ports chosen earlier, overridden by HEIMDALL_STACK_<SERVICE>_PORT, else fresh ones."""
    ports: dict[str, int] = {}
    if paths.ports_file.exists():
        ports = {k: int(v) for k, v in json.loads(paths.ports_file.read_text()).items()}
    wanted = {
        "kafka": "HEIMDALL_STACK_KAFKA_PORT",
        "kafka_controller": "HEIMDALL_STACK_KAFKA_CONTROLLER_PORT",
        "redis": "HEIMDALL_STACK_REDIS_PORT",
        "mlflow": "HEIMDALL_STACK_MLFLOW_PORT",
    }
    for name, env in wanted.items():
        if env in os.environ:
            ports[name] = int(os.environ[env])
        elif name not in ports:
            ports[name] = free_port()
    paths.state.mkdir(parents=True, exist_ok=True)
    paths.ports_file.write_text(json.dumps(ports, indent=2))
    return ports


# --------------------------------------------------------------------------- processes


def read_pid(paths: Paths, service: str) -> int | None:
    """The pid of a service this script started, if that process is still the same one."""
    pidfile = paths.pidfile(service)
    if not pidfile.exists():
        return None
    try:
        pid = int(pidfile.read_text().strip())
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (ValueError, OSError):
        return None
    # A recycled pid belongs to someone else: only claim a process that runs inside this state
    # directory (every service is started there; redis-server rewrites its command line, so the
    # working directory is the reliable mark).
    return pid if (cwd + "/").startswith(str(paths.state) + "/") and not _is_zombie(pid) else None


def spawn(paths: Paths, service: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    """Start a service in its own session (so its whole process group can be stopped)."""
    logfile = paths.state / f"{service}.out"
    with logfile.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=paths.state,
            env={**os.environ, **(env or {})},
        )
    paths.pidfile(service).write_text(str(proc.pid))
    return proc.pid


def wait_until(check: Callable[[], bool], timeout: float, what: str, pid: int) -> float:
    """Poll ``check`` until it holds; fail early if the process died. Returns seconds taken."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            raise RuntimeError(f"{what} exited during start-up; see its log in the state dir")
        if check():
            return time.monotonic() - start
        time.sleep(0.25)
    raise RuntimeError(f"{what} did not become ready within {timeout:.0f}s")


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def stop(paths: Paths, service: str, sig: int = signal.SIGTERM) -> None:
    """Stop a service this script started: signal its process group, wait, then SIGKILL."""
    pid = read_pid(paths, service)
    if pid is None:
        paths.pidfile(service).unlink(missing_ok=True)
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.2)
    if _group_alive(pid):
        log(f"{service} did not stop within {STOP_TIMEOUT_S:.0f}s; sending SIGKILL")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        while _group_alive(pid):
            time.sleep(0.1)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    paths.pidfile(service).unlink(missing_ok=True)
    log(f"{service} stopped (pid {pid}, signal {signal.Signals(sig).name})")


def _group_alive(pgid: int) -> bool:
    """Whether any non-zombie process of the group is left."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# --------------------------------------------------------------------------- secured stack

KAFKA_ADMIN_USER = "admin"
KAFKA_CLIENT_USER = "heimdall"


def make_secure(paths: Paths) -> None:
    """Create passwords and TLS material for a secured stack once (idempotent)."""
    paths.state.mkdir(parents=True, exist_ok=True)
    if (paths.state / "kafka" / "data" / "meta.properties").exists() and not paths.secure:
        raise RuntimeError(
            f"{paths.state} holds a broker formatted without SCRAM users; use another HEIMDALL_STACK_DIR"
        )
    if not paths.secrets_file.exists():
        # Hex tokens: safe inside JAAS strings, URLs and shell lines without quoting.
        values = {
            name: secrets.token_hex(16)
            for name in ("kafka_admin_password", "kafka_password", "redis_password", "keystore_password")
        }
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
        raise RuntimeError("openssl is needed for the secured stack; install it (apt-get install openssl)")
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


def kafka_client_options(paths: Paths, *, admin: bool = False) -> dict[str, str]:
    """The librdkafka options for this stack's Kafka (empty for the plain stack)."""
    if not paths.secure:
        return {}
    values = load_secrets(paths)
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": KAFKA_ADMIN_USER if admin else KAFKA_CLIENT_USER,
        "sasl.password": values["kafka_admin_password" if admin else "kafka_password"],
        "ssl.ca.location": str(paths.tls / "ca.pem"),
    }


# --------------------------------------------------------------------------- kafka


def kafka_classpath(paths: Paths) -> str:
    """Fetch the Kafka jars from Maven Central once, into the cache; return the classpath."""
    pom = HERE / "kafka" / "pom.xml"
    libs = paths.cache / "kafka-libs"
    stamp = libs / ".pom-stamp"
    pom_text = pom.read_text()
    if not (stamp.exists() and stamp.read_text() == pom_text):
        if shutil.which("mvn") is None:
            raise RuntimeError("Maven (mvn) is needed to fetch Kafka; install it (apt-get install maven)")
        log(f"fetching Kafka jars with Maven into {libs}")
        start = time.monotonic()
        shutil.rmtree(libs, ignore_errors=True)
        subprocess.run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={libs}",
                "-DincludeScope=runtime",
            ],
            check=True,
        )
        stamp.write_text(pom_text)
        log(f"Maven fetch took {time.monotonic() - start:.1f}s")
    return str(libs / "*")


def java_binary() -> str:
    """A Java 17+ runtime: JAVA_HOME, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not java:
        raise RuntimeError(
            "Java 17 is needed for Kafka; install it (apt-get install openjdk-17-jre-headless)"
        )
    return java


def kafka_config(paths: Paths, ports: dict[str, int]) -> Path:
    """Write server.properties and the log4j2 configuration for a single KRaft node."""
    kdir = paths.state / "kafka"
    kdir.mkdir(parents=True, exist_ok=True)
    broker, controller = ports["kafka"], ports["kafka_controller"]
    listener = "SASL_SSL" if paths.secure else "PLAINTEXT"
    props = f"""# Generated by deploy/local/stack.py: single-node KRaft broker for tests and the demo.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller}
listeners={listener}://127.0.0.1:{broker},CONTROLLER://127.0.0.1:{controller}
advertised.listeners={listener}://127.0.0.1:{broker}
controller.listener.names=CONTROLLER
inter.broker.listener.name={listener}
listener.security.protocol.map={listener}:{listener},CONTROLLER:PLAINTEXT
log.dirs={kdir / "data"}
num.partitions=3
auto.create.topics.enable=false
# One node: every internal topic must live with replication factor 1, or transactions and
# consumer groups never become available.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests create many short-lived groups; do not make each of them wait 3 s for members.
group.initial.rebalance.delay.ms=0
# Allow a few oversized test messages through the broker so the consumer's own bound is tested.
message.max.bytes=8388608
log.retention.hours=24
log.segment.bytes=67108864
"""
    if paths.secure:
        props += secure_kafka_properties(paths)
    (kdir / "server.properties").touch(mode=0o600)
    (kdir / "server.properties").write_text(props)
    (kdir / "log4j2.yaml").write_text(
        f"""Configuration:
  Appenders:
    RollingFile:
      name: FILE
      fileName: {kdir / "server.log"}
      filePattern: {kdir / "server.log.%i"}
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
      Policies:
        SizeBasedTriggeringPolicy:
          size: 20MB
      DefaultRolloverStrategy:
        max: 3
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: FILE
"""
    )
    return kdir


def secure_kafka_properties(paths: Paths) -> str:
    """SASL_SSL with SCRAM-SHA-512 on the client listener; the broker authenticates as admin."""
    values = load_secrets(paths)
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{KAFKA_ADMIN_USER}" password="{values["kafka_admin_password"]}";'
    )
    return f"""# Secured stack: TLS with the generated test CA, SCRAM-SHA-512 users created at format time.
sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas}
ssl.keystore.type=PKCS12
ssl.keystore.location={paths.tls / "broker.p12"}
ssl.keystore.password={values["keystore_password"]}
ssl.key.password={values["keystore_password"]}
ssl.truststore.type=PEM
ssl.truststore.location={paths.tls / "ca.pem"}
ssl.client.auth=none
"""


def start_kafka(paths: Paths, ports: dict[str, int]) -> int:
    """Format the storage once and start ``kafka.Kafka``."""
    classpath = kafka_classpath(paths)
    java = java_binary()
    kdir = kafka_config(paths, ports)
    props = kdir / "server.properties"
    if not (kdir / "data" / "meta.properties").exists():
        cluster_id = new_cluster_id()
        users: list[str] = []
        if paths.secure:
            values = load_secrets(paths)
            for user, key in (
                (KAFKA_ADMIN_USER, "kafka_admin_password"),
                (KAFKA_CLIENT_USER, "kafka_password"),
            ):
                users += ["--add-scram", f"SCRAM-SHA-512=[name={user},password={values[key]}]"]
        storage = [java, "-cp", classpath, "kafka.tools.StorageTool", "format", "-t", cluster_id]
        subprocess.run(
            [*storage, "-c", str(props), *users],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    heap = os.environ.get("HEIMDALL_STACK_KAFKA_HEAP", "768m")
    return spawn(
        paths,
        "kafka",
        [
            java,
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={kdir / 'log4j2.yaml'}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(props),
        ],
    )


def new_cluster_id() -> str:
    """A cluster id in Kafka's own format: URL-safe base64 of a random UUID, 22 characters."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def kafka_ready(paths: Paths, port: int) -> bool:
    """A metadata request answered with one broker (TCP alone when confluent-kafka is absent)."""
    if not port_open(port):
        return False
    try:
        from confluent_kafka.admin import AdminClient
    except ImportError:
        return True
    try:
        options: dict[str, str | int] = {"bootstrap.servers": f"127.0.0.1:{port}", "log_level": 0}
        admin = AdminClient({**options, **kafka_client_options(paths, admin=True)})
        metadata = admin.list_topics(timeout=2)
        return len(metadata.brokers) >= 1
    except Exception:
        return False


# --------------------------------------------------------------------------- redis, mlflow


def start_redis(paths: Paths, ports: dict[str, int]) -> int:
    """Start Debian's redis-server on loopback, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is missing; install it (apt-get install redis-server)")
    rdir = paths.state / "redis"
    rdir.mkdir(parents=True, exist_ok=True)
    argv = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(ports["redis"]),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(rdir),
        "--daemonize",
        "no",
        "--protected-mode",
        "no",
        "--logfile",
        str(rdir / "redis.log"),
    ]
    password = os.environ.get("HEIMDALL_STACK_REDIS_PASSWORD")
    if paths.secure:
        password = load_secrets(paths)["redis_password"]
        tls = paths.tls
        # TLS only: the plain port is closed; clients need not present a certificate.
        argv[argv.index("--port") + 1] = "0"
        argv += ["--tls-port", str(ports["redis"]), "--tls-cert-file", str(tls / "server.pem")]
        argv += ["--tls-key-file", str(tls / "server.key"), "--tls-ca-cert-file", str(tls / "ca.pem")]
        argv += ["--tls-auth-clients", "no"]
    if password:
        argv += ["--requirepass", password]
    return spawn(paths, "redis", argv)


def redis_ready(paths: Paths, port: int) -> bool:
    """PING answered (or NOAUTH, which also proves a live Redis), over TLS when secured."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as raw:
            sock: socket.socket = raw
            if paths.secure:
                context = ssl.create_default_context(cafile=str(paths.tls / "ca.pem"))
                sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    return reply.startswith((b"+PONG", b"-NOAUTH"))


def start_mlflow(paths: Paths, ports: dict[str, int]) -> int:
    """Start ``mlflow server`` with a sqlite backend and a proxied local artifact root."""
    mlflow = Path(sys.executable).with_name("mlflow")
    binary = str(mlflow) if mlflow.exists() else shutil.which("mlflow")
    if binary is None:
        raise RuntimeError("mlflow is missing; install the dev extra (pip install -e '.[dev]')")
    mdir = paths.state / "mlflow"
    (mdir / "artifacts").mkdir(parents=True, exist_ok=True)
    return spawn(
        paths,
        "mlflow",
        [
            binary,
            "server",
            "--backend-store-uri",
            f"sqlite:///{mdir / 'mlflow.db'}",
            "--artifacts-destination",
            str(mdir / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(ports["mlflow"]),
            "--workers",
            "1",
        ],
        # The job runner spawns a handful of worker processes this stack never uses.
        env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )


def mlflow_ready(_paths: Paths, port: int) -> bool:
    """GET /health answered with 200."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


STARTERS: dict[str, Callable[[Paths, dict[str, int]], int]] = {
    "kafka": start_kafka,
    "redis": start_redis,
    "mlflow": start_mlflow,
}
READY: dict[str, Callable[[Paths, int], bool]] = {
    "kafka": kafka_ready,
    "redis": redis_ready,
    "mlflow": mlflow_ready,
}


# --------------------------------------------------------------------------- commands


def write_env(paths: Paths, ports: dict[str, int]) -> None:
    """Write the addresses for tests (HEIMDALL_TEST_*) and the consumer (HEIMDALL_*)."""
    kafka = f"127.0.0.1:{ports['kafka']}"
    redis = f"{'rediss' if paths.secure else 'redis'}://127.0.0.1:{ports['redis']}/0"
    mlflow = f"http://127.0.0.1:{ports['mlflow']}"
    lines = [
        f"HEIMDALL_TEST_KAFKA={kafka}",
        f"HEIMDALL_TEST_REDIS={redis}",
        f"HEIMDALL_TEST_MLFLOW={mlflow}",
        f"HEIMDALL_KAFKA__BOOTSTRAP_SERVERS={kafka}",
        f"HEIMDALL_REDIS__URL={redis}",
        f"HEIMDALL_MLFLOW__TRACKING_URI={mlflow}",
        f"MLFLOW_TRACKING_URI={mlflow}",
    ]
    if paths.secure:
        values = load_secrets(paths)
        kafka_options = kafka_client_options(paths)
        lines += [
            f"HEIMDALL_KAFKA__SECURITY_PROTOCOL={kafka_options['security.protocol']}",
            f"HEIMDALL_KAFKA__SASL_MECHANISM={kafka_options['sasl.mechanism']}",
            f"HEIMDALL_KAFKA__SASL_USERNAME={kafka_options['sasl.username']}",
            f"HEIMDALL_KAFKA__SASL_PASSWORD={kafka_options['sasl.password']}",
            f"HEIMDALL_KAFKA__SSL_CA_LOCATION={kafka_options['ssl.ca.location']}",
            f"HEIMDALL_REDIS__PASSWORD={values['redis_password']}",
            f"HEIMDALL_REDIS__SSL_CA_CERTS={paths.tls / 'ca.pem'}",
        ]
    paths.env_file.touch(mode=0o600)
    paths.env_file.write_text("\n".join(lines) + "\n")


def up(paths: Paths, services: list[str], *, secure: bool = False) -> None:
    """Start each service unless it already runs and answers; then write the env file."""
    if secure or paths.secure:
        make_secure(paths)
    ports = load_ports(paths)
    for service in services:
        port = ports[service]
        pid = read_pid(paths, service)
        if pid is not None and READY[service](paths, port):
            log(f"{service} already up on 127.0.0.1:{port} (pid {pid})")
            continue
        if pid is not None:
            stop(paths, service)
        if port_open(port):
            raise RuntimeError(
                f"port {port} for {service} is taken by a process this stack did not start; "
                f"free it or set HEIMDALL_STACK_{service.upper()}_PORT"
            )
        pid = STARTERS[service](paths, ports)
        took = wait_until(functools.partial(READY[service], paths, port), READY_TIMEOUT_S, service, pid)
        log(f"{service} ready on 127.0.0.1:{port} (pid {pid}) after {took:.1f}s")
    write_env(paths, ports)


def down(paths: Paths, services: list[str], sig: int = signal.SIGTERM) -> None:
    """Stop the named services (all by default) and wait until their ports are free."""
    ports = json.loads(paths.ports_file.read_text()) if paths.ports_file.exists() else {}
    for service in reversed(services):
        stop(paths, service, sig)
        port = ports.get(service)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while port and port_open(int(port)) and time.monotonic() < deadline:
            time.sleep(0.2)


def status(paths: Paths) -> int:
    """Print one line per service; exit 0 only when all of them answer."""
    ports = json.loads(paths.ports_file.read_text()) if paths.ports_file.exists() else {}
    healthy = True
    for service in SERVICES:
        pid = read_pid(paths, service)
        port = ports.get(service)
        ready = port is not None and READY[service](paths, int(port))
        healthy &= ready
        state = "ready" if ready else ("started, not answering" if pid else "stopped")
        print(f"{service:7s} {state:24s} port={port} pid={pid}")
    return 0 if healthy else 1


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "kill", "status", "env"])
    parser.add_argument("services", nargs="*", metavar="SERVICE", help="kafka, redis, mlflow")
    parser.add_argument(
        "--secure",
        action="store_true",
        default=os.environ.get("HEIMDALL_STACK_SECURE") == "1",
        help="up: Kafka on SASL_SSL/SCRAM-SHA-512 and Redis on TLS with a password (new state dir)",
    )
    args = parser.parse_intermixed_args(argv)
    unknown = set(args.services) - set(SERVICES)
    if unknown:
        parser.error(f"unknown service(s): {', '.join(sorted(unknown))}")
    paths = Paths.from_env()
    services = [s for s in SERVICES if s in args.services] or list(SERVICES)
    try:
        if args.command == "up":
            up(paths, services, secure=args.secure)
        elif args.command == "down":
            down(paths, services)
        elif args.command == "kill":
            down(paths, services, signal.SIGKILL)
        elif args.command == "status":
            return status(paths)
        elif args.command == "env":
            if not paths.env_file.exists():
                print("stack is not up: no env file", file=sys.stderr)
                return 1
            print(paths.env_file.read_text(), end="")
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
