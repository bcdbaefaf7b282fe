"""Supporting services: DNS, GeoIP, AI models, caches, the Enterprise licence, ACME (spec/services.md)."""
