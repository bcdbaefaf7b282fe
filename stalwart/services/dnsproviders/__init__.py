"""DNS providers: RFC 2136 with TSIG and hosted APIs, managed record sets (spec/services.md §2)."""
