"""A Sigstore instance on loopback, for signing and verifying with the real sigstore-python.

`SigstoreInstance` runs an OIDC issuer, a Fulcio-like CA (with an embedded-SCT
CT log) and a Rekor v1-like transparency log, each a `ThreadingHTTPServer` on
127.0.0.1, and writes the `trusted_root.json` / client trust config that point
sigstore-python (`SigningContext.from_trust_config`, `Verifier`, and the CLI's
`--trust-config`) at them. Nothing here talks to anything but 127.0.0.1.

Choices that follow from sigstore-python 4.x's source:

* Plain HTTP. Nothing in sigstore-python requires https: service URLs are plain
  strings in the signing config and trusted root, and `requests` is used without
  scheme checks. So no TLS, no CA bundle and no REQUESTS_CA_BUNDLE. Only proxies
  matter: `requests` honours HTTP(S)_PROXY, so a client process should carry
  `SigstoreInstance.environ` (NO_PROXY=127.0.0.1,...) if the environment sets a
  proxy.
* Rekor v1, not v2. The signing config lists one log with `majorApiVersion: 1`,
  so `SigningContext` uses sigstore's `RekorClient` and bundles carry `dsse` /
  `hashedrekord` 0.0.1 entries with an inclusion proof, a checkpoint *and* a
  signed entry timestamp. The SET's integrated time is the verifier's source of
  signing time; a Rekor v2 log gives no integrated time, so it would also need a
  timestamp authority.
* No timestamp authority: `tsaUrls` and `timestampAuthorities` are empty.
"""

from .instance import DEFAULT_IDENTITY, SigstoreInstance

__all__ = ["DEFAULT_IDENTITY", "SigstoreInstance"]
