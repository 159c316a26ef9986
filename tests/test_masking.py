"""One masking function for every storage URI shown: user information, query values and fragments
never show, however the URI is written."""

from __future__ import annotations

import pytest

from flask_tailnet import cli as cli_module
from flask_tailnet import ratelimit
from flask_tailnet.masking import mask_uri, uri_secrets, without_secrets

SECRET = "hunter2"

#: (URI, what is shown). Every URI holds SECRET (or a spelling of it) somewhere secret.
MASKED = [
    pytest.param("redis://:hunter2@h:6379/0", "redis://***@h:6379/0", id="redis-password-only"),
    pytest.param("redis://user:hunter2@h", "redis://***@h", id="redis-user-and-password"),
    pytest.param("redis://hunter2@h", "redis://***@h", id="redis-user-only"),
    pytest.param("rediss://u:hunter2@h:6380/1", "rediss://***@h:6380/1", id="rediss"),
    pytest.param("redis://h:6379/0?password=hunter2", "redis://h:6379/0?password=***", id="query"),
    pytest.param(
        "redis://h/0?db=1&password=hunter2&socket_timeout=2",
        "redis://h/0?db=***&password=***&socket_timeout=***",
        id="query-among-others",
    ),
    pytest.param("redis://h/0?PASSWORD=hunter2", "redis://h/0?PASSWORD=***", id="query-upper"),
    pytest.param("redis://h/0?pwd=hunter2", "redis://h/0?pwd=***", id="query-pwd"),
    pytest.param("redis://h/0?token=hunter2", "redis://h/0?token=***", id="query-token"),
    pytest.param("redis://h/0?x=hunter2", "redis://h/0?x=***", id="query-innocent-name"),
    pytest.param("redis://h/0?hunter2", "redis://h/0?***", id="query-value-without-name"),
    pytest.param("redis://h/0?password=a=hunter2", "redis://h/0?password=***", id="query-equals"),
    pytest.param("redis://h/0?password=hunter2#f", "redis://h/0?password=***#***", id="query-frag"),
    pytest.param("redis://h/0#hunter2", "redis://h/0#***", id="fragment"),
    pytest.param("redis://u:hunter2@h/0?x=1#y", "redis://***@h/0?x=***#***", id="everything"),
    pytest.param(
        "redis+sentinel://:hunter2@h1:26379,h2:26379,h3:26379/mymaster",
        "redis+sentinel://***@h1:26379,h2:26379,h3:26379/mymaster",
        id="sentinel-several-hosts",
    ),
    pytest.param(
        "redis+sentinel://h1:26379,h2:26379/m?sentinel_password=hunter2&password=hunter2",
        "redis+sentinel://h1:26379,h2:26379/m?sentinel_password=***&password=***",
        id="sentinel-passwords-in-query",
    ),
    pytest.param(
        "redis+sentinel://u:hunter2@h1,u:hunter2@h2/m",
        "redis+sentinel://***@h2/m",
        id="sentinel-userinfo-per-host",
    ),
    pytest.param(
        "redis+cluster://:hunter2@h1:7000,h2:7001",
        "redis+cluster://***@h1:7000,h2:7001",
        id="cluster",
    ),
    pytest.param(
        "redis+unix:///run/redis.sock?password=hunter2",
        "redis+unix:///run/redis.sock?password=***",
        id="unix-socket-query",
    ),
    pytest.param(
        "redis+unix://:hunter2@/run/redis.sock?db=0",
        "redis+unix://***@/run/redis.sock?db=***",
        id="unix-socket-userinfo",
    ),
    pytest.param(
        "memcached://u:hunter2@h:11211", "memcached://***@h:11211", id="memcached-userinfo"
    ),
    pytest.param(
        "mongodb://u:hunter2@h1,h2/db?authSource=admin&replicaSet=rs",
        "mongodb://***@h1,h2/db?authSource=***&replicaSet=***",
        id="mongodb",
    ),
    pytest.param("redis://u:hun%74er2@h", "redis://***@h", id="percent-encoded-password"),
    pytest.param(
        "redis://h/0?password=hun%74er2", "redis://h/0?password=***", id="percent-encoded-query"
    ),
    pytest.param("redis://u:hunt@er2@h", "redis://***@h", id="at-sign-in-password"),
    pytest.param("redis://u:hun%40ter2@h", "redis://***@h", id="escaped-at-in-password"),
    pytest.param("redis://u:h/unter2@h/0", "redis://***@h/0", id="slash-in-password"),
    pytest.param("redis://u:h?unter2@h/0", "redis://***", id="question-mark-in-password"),
    pytest.param("redis://u:h#unter2@h/0", "redis://***", id="hash-in-password"),
    pytest.param("redis://u:h&p=unter2@h/0", "redis://***@h/0", id="ampersand-in-password"),
    pytest.param("redis://h/0?password=p@hunter2", "redis://***", id="at-sign-in-query"),
    pytest.param("redis://h/0#p@hunter2", "redis://***", id="at-sign-in-fragment"),
    pytest.param("u:hunter2@h:6379", "***@h:6379", id="no-scheme"),
    pytest.param("h:6379?password=hunter2", "h:6379?password=***", id="no-scheme-query"),
    pytest.param("pass:hunter2@redis://h", "***@redis://h", id="userinfo-before-the-scheme"),
    pytest.param("1redis://u:hunter2@h", "***@h", id="not-a-scheme"),
    pytest.param("redis:/u:hunter2@h", "***@h", id="one-slash"),
    pytest.param("://u:hunter2@h", "***@h", id="empty-scheme"),
    pytest.param("redis://u:hunter2\n@h", "redis://***@h", id="newline-in-userinfo"),
    pytest.param("redis://default:hunter2/0", "redis://***/0", id="password-without-at-host"),
    pytest.param("redis://:hunter2", "redis://***", id="password-without-at"),
    pytest.param("redis://h:6379,u:hunter2/m", "redis://***/m", id="password-without-at-hosts"),
    pytest.param("redis://[::1]:hunter2/0", "redis://***/0", id="password-without-at-ipv6"),
    pytest.param("@@@hunter2@", "***@", id="garbage-at-signs"),
    pytest.param("?#@hunter2", "***", id="garbage-marks"),
    pytest.param("", "", id="empty"),
    pytest.param(
        "redis://hunter2\x1b[2J\u2028", "redis://hunter2\\x1b[2J\\u2028", id="no-escape-codes"
    ),
]


@pytest.mark.parametrize(("uri", "shown"), MASKED)
def test_mask_uri_hides_every_secret_part(uri: str, shown: str) -> None:
    assert mask_uri(uri) == shown
    if "//hunter2" in uri:  # a host named like the secret is a host, and shown
        return
    for spelling in (SECRET, "hun%74er2", "hunt@er2", "hun%40ter2", "unter2"):
        assert spelling not in mask_uri(uri)


@pytest.mark.parametrize("value", [None, 6379, b"redis://u:hunter2@h", ["redis://u:hunter2@h"]])
def test_anything_but_text_is_masked_whole(value: object) -> None:
    assert mask_uri(value) == "***"


def test_one_masker_for_every_place_a_uri_is_shown() -> None:
    assert vars(cli_module)["mask_uri"] is mask_uri
    assert vars(ratelimit)["mask_uri"] is mask_uri


#: (URI, an error text a storage library could write about it, the secret that must go).
SCRUBBED = [
    pytest.param("redis://u:hunter2@h", "AUTH u hunter2 failed", "hunter2", id="password"),
    pytest.param("redis://admin:hunter2@h", "user admin refused", "admin", id="user-name"),
    pytest.param("redis://u:hun%74er2@h", "password hunter2", "hunter2", id="decoded-password"),
    pytest.param("redis://h/0?password=hunter2", "bad password hunter2", "hunter2", id="query"),
    pytest.param("redis://h/0?password=hun+ter2", "bad hun ter2", "hun ter2", id="query-plus"),
    pytest.param(
        "redis+sentinel://h1,h2/m?sentinel_password=hunter2",
        "sentinel said hunter2",
        "hunter2",
        id="sentinel-password",
    ),
    pytest.param("redis://h/0?password=p@hunter2", "p@hunter2", "hunter2", id="at-in-query"),
    pytest.param("redis://h/0#hunter2", "fragment hunter2", "hunter2", id="fragment"),
    pytest.param("u:hunter2@h", "u:hunter2@h is not a URI", "hunter2", id="no-scheme"),
    pytest.param("redis://u:hunter?2@h", "port 'hunter'", "hunter", id="question-mark-cut"),
    pytest.param("redis://u:hunter/2@h", "port 'hunter'", "hunter", id="slash-cut"),
    pytest.param("redis://u:hunter#2@h", "port 'hunter'", "hunter", id="hash-cut"),
    pytest.param("redis://:hunter2?x@h", "port 'hunter2'", "hunter2", id="cut-after-password"),
    pytest.param("redis://hunter?2@h", "connecting to hunter:6379", "hunter", id="host-cut"),
    pytest.param(
        "redis://default:hunter2/0",
        "Port could not be cast to integer value as 'hunter2'",
        "hunter2",
        id="password-without-at-host",
    ),
]


@pytest.mark.parametrize(("uri", "text", "secret"), SCRUBBED)
def test_error_text_about_a_uri_loses_its_secrets(uri: str, text: str, secret: str) -> None:
    assert secret not in without_secrets(text, uri_secrets(uri))


def test_innocent_query_values_stay_in_error_text() -> None:
    """A value like ``0`` is masked where the URI is shown, but not scrubbed from every error
    text: it would turn ``127.0.0.1`` into ``127.***.***.1``."""
    secrets = uri_secrets("redis://127.0.0.1:6379/0?db=0&socket_timeout=1")
    assert without_secrets("Error connecting to 127.0.0.1:6379", secrets) == (
        "Error connecting to 127.0.0.1:6379"
    )


# More spellings, as `flask tailnet status` shows the limit storage.
@pytest.mark.parametrize(
    ("uri", "masked"),
    [
        ("memory://", "memory://"),
        ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@host:6379/0", "redis://***@host:6379/0"),
        ("redis://user:pw@host", "redis://***@host"),
        ("redis://user:p@ss@host", "redis://***@host"),
        ("redis://user:p/ss@host/0", "redis://***@host/0"),
        ("redis://user:p?ss@host/0", "redis://***"),  # as ambiguous as redis://h?password=p@ss
        ("redis://user:p#ss@host/0", "redis://***"),
        ("rediss://user:pw@host/0?x=1", "rediss://***@host/0?x=***"),
        ("redis://host/0?password=pw&db=1", "redis://host/0?password=***&db=***"),
        ("redis+unix:///run/redis.sock?password=pw", "redis+unix:///run/redis.sock?password=***"),
        ("redis://host/0?pw", "redis://host/0?***"),
        ("redis://host/0#pw", "redis://host/0#***"),
        ("redis+sentinel://:pw@h1:26379,h2:26379/m", "redis+sentinel://***@h1:26379,h2:26379/m"),
        ("user:pw@host", "***@host"),
    ],
)
def test_mask_uri(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked
