"""The auto-ban layer's login throttle reaches the failure reply (security.md §3)."""
from stalwart.protocols import mailcommon
from stalwart.protocols.base import SessionContext


def ctx():
    return SessionContext(hostname="h", listener="l", protocol="smtp", remote_ip="192.0.2.1", remote_port=1,
                          local_port=25)


def test_random_pause_without_throttle():
    for _ in range(50):
        assert mailcommon.AUTH_FAILURE_DELAY[0] <= mailcommon.failure_delay(ctx()) <= mailcommon.AUTH_FAILURE_DELAY[1]


def test_throttled_login_waits_the_escalated_delay_once():
    c = ctx()
    c.extra["failure_delay"] = 8.0  # what AutoBan._throttle leaves while auth.failed is emitted
    assert mailcommon.failure_delay(c) == 8.0
    assert "failure_delay" not in c.extra
    assert mailcommon.failure_delay(c) <= mailcommon.AUTH_FAILURE_DELAY[1]
