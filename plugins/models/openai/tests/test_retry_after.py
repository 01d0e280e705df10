"""Parsing a server's ``Retry-After`` header: delta-seconds or an HTTP date."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from dreamgym_plugin_openai.backend import retry_after_seconds

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize(("value", "seconds"), [("20", 20.0), ("0", 0.0), (" 1.5 ", 1.5), ("120", 120.0)])
def test_delta_seconds(value, seconds):
    assert retry_after_seconds(value, NOW) == seconds


def test_an_http_date_is_the_seconds_from_now():
    assert retry_after_seconds("Sat, 01 Mar 2025 12:00:30 GMT", NOW) == 30.0
    assert retry_after_seconds("Sat, 01 Mar 2025 11:59:00 GMT", NOW) == 0.0  # already past: no extra wait


@pytest.mark.parametrize("value", [None, "", "soon", "1e3", "inf", "nan", "1_000", "Sat, 99 Foo 2025", "12 seconds"])
def test_no_header_or_junk_is_none(value):
    assert retry_after_seconds(value, NOW) is None


@pytest.mark.parametrize("value", ["-1", "-0.5"])
def test_a_negative_wait_is_ignored(value):
    assert retry_after_seconds(value, NOW) is None
