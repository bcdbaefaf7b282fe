from stalwart.security.autoban import SharedSecurity


def test_shared_tables_take_the_configured_capacities():
    sec = SharedSecurity(128, 64)
    assert sec.bans.capacity == 128 and sec.counters.capacity == 64
