"""Reliability tests reuse the integration fixtures (services, model, settings, readers)."""

from tests.integration.conftest import make_settings, model_uri, start_consumer, start_stream  # noqa: F401
from tests.reliability.cluster_fixture import cluster, cluster_settings, healthy_cluster  # noqa: F401
from tests.reliability.fault_run import RECORDED
from tests.reliability.secured import secure_stack  # noqa: F401  (one secured stack per session)


def pytest_terminal_summary(terminalreporter):
    """The cluster fault tests' figures: lost, duplicated and time to recover, one line each."""
    if RECORDED:
        terminalreporter.section("cluster faults (also in test-artifacts/cluster-faults.json)", sep="-")
        for o in RECORDED:
            terminalreporter.line(
                f"{o.fault}: {o.captures} captures, lost {o.lost}, duplicated {o.duplicated}, "
                f"recovered in {o.recovery_s:.1f} s {o.detail}".rstrip()
            )
