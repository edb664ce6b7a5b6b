"""Progress of long commands: plain final lines off a terminal, a bar on one."""

from __future__ import annotations

import io

import pytest

from heimdall_stream.console.progress import Steps


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_each_step_is_a_few_plain_lines() -> None:
    out, clock = io.StringIO(), Clock()
    with Steps(out, tty=False, clock=clock) as steps:
        steps.start("simulating 100 captures", 100)
        for _ in range(100):
            clock.now += 0.1
            steps.advance()
        steps.start("fitting the position network")
        clock.now += 2.5
    assert out.getvalue().splitlines() == [
        "simulating 100 captures (0/100)…",
        "  simulating 100 captures: 25 % (25/100)",
        "  simulating 100 captures: 50 % (50/100)",
        "  simulating 100 captures: 75 % (75/100)",
        "  simulating 100 captures: done (100/100, 10.0 s)",
        "fitting the position network…",
        "  fitting the position network: done (2.5 s)",
    ]
    assert "\r" not in out.getvalue()


def test_a_big_advance_reports_each_quarter_it_crosses_once() -> None:
    out = io.StringIO()
    steps = Steps(out, tty=False, clock=Clock())
    steps.start("publishing", 8)
    steps.advance(7)
    steps.advance(1)
    steps.finish()
    assert [line for line in out.getvalue().splitlines() if "%" in line] == [
        "  publishing: 25 % (7/8)",
        "  publishing: 50 % (7/8)",
        "  publishing: 75 % (7/8)",
    ]


def test_a_failed_step_says_failed_not_done() -> None:
    out = io.StringIO()
    with pytest.raises(RuntimeError), Steps(out, tty=False, clock=Clock()) as steps:
        steps.start("registering")
        raise RuntimeError("MLflow went away")
    assert out.getvalue().splitlines()[-1] == "  registering: failed after 0.0 s"


def test_on_a_terminal_a_counted_step_is_a_bar() -> None:
    out = io.StringIO()
    with Steps(out, tty=True, clock=Clock()) as steps:
        steps.start("collecting the results", 4)
        steps.advance(4)
    text = out.getvalue()
    assert "collecting the results" in text and "4/4" in text and "\r" in text
    assert "done (" not in text  # the bar left on screen says it


def test_a_stream_that_is_no_terminal_gets_lines() -> None:
    assert not Steps(io.StringIO()).tty
