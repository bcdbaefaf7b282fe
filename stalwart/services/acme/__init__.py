"""ACME (RFC 8555) certificate issuance and renewal (spec/tls.md §6-§7).

Configuration::

    {"AcmeProvider": [{"id": "le", "contact": ["admin@example.org"], "challengeType": "Http01"}],
     "Domain": [{"name": "example.org",
                 "certificateManagement": {"@type": "Automatic", "acmeProviderId": "le",
                                           "subjectAlternativeNames": ["mail", "*"]}}]}

How it fits together:

* the master's :class:`~.scheduler.AcmeScheduler` (ticked by the master loop) decides when each
  domain is due and runs :mod:`.helper` in a child process, one renewal at a time;
* the helper runs :func:`~.renewal.renew`: account (:mod:`.state`), order and challenges
  (:mod:`.client`, :mod:`.challenges`, DNS through :mod:`stalwart.services.dnsproviders`), then writes
  ``<data-dir>/acme/certs/<domain>.pem``;
* the master rebuilds its certificate store and bumps ``CERT_EPOCH``; every worker swaps in the new
  SNI tables within a second, with no restart and no dropped connection;
* HTTP-01 answers are served by every HTTP listener, TLS-ALPN-01 by implicit-TLS HTTP listeners
  (:mod:`.alpn`, through ``Worker.tls_context`` and the peeked ClientHello);
* ``stalwart-cli acme status|renew DOMAIN`` talk to the master; ``acme rollover|deactivate PROVIDER``
  and ``acme revoke DOMAIN`` act on the CA from ``--config`` and ``--data-dir`` (:mod:`.actions`);
  ``acme rollback DOMAIN`` serves the certificate the last renewal replaced (:mod:`.state` keeps them);
* the CLI actions and each renewal's order hold the provider's lock (:mod:`.lock`), so they never
  interleave on one account's files.
"""
