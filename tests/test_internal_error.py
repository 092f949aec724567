"""A bug in inferkit (an exception nobody foresaw) is exit 70 with one line that says to rerun with -v,
not a job failure (1) or a usage error (2); -v shows the traceback."""

from __future__ import annotations

import pytest


@pytest.fixture
def buggy_render(monkeypatch):
    """A library call of `render` that fails as a bug would: not an InferkitError, not a Click error."""
    from inferkit import chart

    def divide_by_zero(*args, **kwargs):
        return 1 / 0

    monkeypatch.setattr(chart, "render_checked", divide_by_zero)


def test_an_unforeseen_exception_is_exit_70_with_the_verbose_hint(inferkit, buggy_render):
    result = inferkit("render", "--cpu-nodes", "1")
    assert result.code == 70 and result.stdout == ""
    assert result.stderr == ("Error: internal error: ZeroDivisionError: division by zero "
                             "(run with -v for the traceback)\n")


def test_verbose_shows_the_traceback_of_an_internal_error(inferkit, buggy_render):
    result = inferkit("-v", "render", "--cpu-nodes", "1")
    assert result.code == 70
    assert "Traceback (most recent call last)" in result.stderr and "in divide_by_zero" in result.stderr
    assert result.stderr.rstrip().endswith("Error: internal error: ZeroDivisionError: division by zero "
                                           "(run with -v for the traceback)")
