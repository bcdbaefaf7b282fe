"""The connection pipeline: limits -> (PROXY -> allow/block) -> TLS -> protocol session driver."""
