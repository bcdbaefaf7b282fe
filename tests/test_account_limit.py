"""`stalwart-cli account add` honours the Enterprise licence's account limit (services.md §6.3)."""
import json
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from stalwart.accounts.admin import add_account
from stalwart.errors import ConfigError
from stalwart.services.license import key as lkey
from stalwart.services.license import trust


def test_account_add_refused_past_the_licensed_count(tmp_path):
    private = Ed25519PrivateKey.generate()
    now = int(time.time())
    licence = lkey.issue(private, "example.org", 1, now - 86400, now + 30 * 86400)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"SystemSettings": {"defaultHostname": "mx.example.org"},
                                "Enterprise": {"licenseKey": {"@type": "Value", "secret": licence}}}))
    with trust.use_test_key(private.public_key()):
        add_account(str(path), "jane", ["jane@example.org"], "pw", data_dir=str(tmp_path / "data"))
        with pytest.raises(ConfigError, match="only allows 1 accounts"):
            add_account(str(path), "bob", ["bob@example.org"], "pw", data_dir=str(tmp_path / "data"))
    assert [a["name"] for a in json.loads(path.read_text())["Account"]] == ["jane"]


def test_without_a_licence_nothing_is_limited(tmp_path):
    path = tmp_path / "config.json"
    for name in ("a", "b", "c"):
        add_account(str(path), name, [f"{name}@example.org"], "pw")
    assert len(json.loads(path.read_text())["Account"]) == 3
