"""The local service stack behind ``deploy/local/stack``, one job per module.

* ``paths``: where the state and the download cache live; the lifecycle log and status lines;
* ``install``: which Java and which ``redis-server`` to run (the system's, else a PyPI package's);
* ``jars``: the Kafka broker's jars, fetched from Maven Central through ``kafka/jars.lock``;
* ``procs``: ports, pid files, starting and stopping processes;
* ``secure``: passwords and the test CA of a secured stack;
* ``acls``: the secured stack's principals and least-privilege ACLs (Admin API, kafka-acls.sh);
* ``kafka``, ``redis``, ``mlflow``: configure, start and probe one service each;
* ``commands``: ``up``, ``down``, ``status`` and the env file.

Only the standard library is used, except for the Kafka readiness check, which uses
confluent-kafka when it is importable.
"""
