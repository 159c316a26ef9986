"""``next`` after login: only same-site relative paths."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_tailnet.redirects import safe_next

NEXT = [
    pytest.param("/", "/", id="root"),
    pytest.param("/dashboard", "/dashboard", id="path"),
    pytest.param("/a/b?c=d&e=f#g", "/a/b?c=d&e=f#g", id="query-and-fragment"),
    pytest.param("/files/my%20doc", "/files/my%20doc", id="encoded-space"),
    pytest.param("/caf%C3%A9", "/caf%C3%A9", id="encoded-utf8"),
    pytest.param("//evil.example", "/", id="scheme-relative"),
    pytest.param("///evil.example", "/", id="triple-slash"),
    pytest.param("/\\evil.example", "/", id="slash-backslash"),
    pytest.param("\\\\evil.example", "/", id="double-backslash"),
    pytest.param("/path\\..\\evil", "/", id="inner-backslash"),
    pytest.param("https://evil.example/", "/", id="absolute-https"),
    pytest.param("http:evil.example", "/", id="scheme-without-slashes"),
    pytest.param("javascript:alert(1)", "/", id="javascript"),
    pytest.param("JaVaScRiPt:alert(1)", "/", id="javascript-case"),
    pytest.param("data:text/html,x", "/", id="data-url"),
    pytest.param("evil.example", "/", id="bare-host"),
    pytest.param("%2F%2Fevil.example", "/", id="encoded-scheme-relative"),
    pytest.param("/%2Fevil.example", "/", id="half-encoded-scheme-relative"),
    pytest.param("/%5Cevil.example", "/", id="encoded-backslash"),
    pytest.param("%252F%252Fevil.example", "/", id="double-encoded"),
    pytest.param("%25252F%25252Fevil.example", "/", id="triple-encoded"),
    pytest.param("%2525252F%2525252Fevil.example", "/", id="four-times-encoded"),
    pytest.param("https%3A%2F%2Fevil.example", "/", id="encoded-absolute"),
    pytest.param("javascript%3Aalert(1)", "/", id="encoded-javascript"),
    pytest.param("/\t/evil.example", "/", id="tab-stripped-by-browsers"),
    pytest.param("/\n/evil.example", "/", id="newline"),
    pytest.param("/%09/evil.example", "/", id="encoded-tab"),
    pytest.param("/%0d%0aSet-Cookie:x", "/", id="header-injection"),
    pytest.param(" /x", "/", id="leading-space"),
    pytest.param("", "/", id="empty"),
    pytest.param(None, "/", id="missing"),
    pytest.param("/" + "a" * 3000, "/", id="over-long"),
]


@pytest.mark.parametrize(("value", "expected"), NEXT)
def test_next_table(value: object, expected: str) -> None:
    assert safe_next(value) == expected


@given(st.text())
def test_safe_next_never_leaves_the_site(value: str) -> None:
    result = safe_next(value)
    assert result.startswith("/")
    assert not result.startswith(("//", "/\\"))
