"""A reload that meets an unexpected exception fails like a bad configuration: the master answers
with the reason and keeps serving the last good generation (found by review: a loader ValueError on
SIGHUP took the master and every worker down)."""
from stalwart.server.master import Master


def test_unexpected_loader_error_is_a_failed_reload_not_a_dead_master(tmp_path):
    master = Master(None, str(tmp_path / "data"))

    def broken_loader():
        raise ValueError("invalid literal for int() with base 10: '²²²'")

    master.load_config = broken_loader
    ok, reason = master._reload()
    assert ok is False
    assert reason.startswith("internal error while loading the configuration: ValueError(")
