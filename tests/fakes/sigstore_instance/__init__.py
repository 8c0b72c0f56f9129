"""A Sigstore instance on loopback, for signing and verifying with the real sigstore-python.

`SigstoreInstance` runs an OIDC issuer, a Fulcio-like CA (with an embedded-SCT
CT log) and a Rekor v1-like transparency log, each a `ThreadingHTTPServer` on
127.0.0.1, and writes the `trusted_root.json` / client trust config that point
sigstore-python (`SigningContext.from_trust_config`, `Verifier`, and the CLI's
`--trust-config`) at them. Nothing here talks to anything but 127.0.0.1.

Use (see ../test_sigstore_instance.py)::

    from fakes.sigstore_instance import SigstoreInstance  # tests/ is on sys.path

    with SigstoreInstance(tmp_path) as inst:  # or .start() / .stop()
        config = ClientTrustConfig.from_json(inst.trust_config.read_text())
        with SigningContext.from_trust_config(config).signer(
            IdentityToken(inst.token())  # default: a GitLab ci_config_ref_uri identity
        ) as signer:
            bundle = signer.sign_dsse(dsse.Statement(statement_json_bytes))
        Verifier(trusted_root=TrustedRoot.from_file(str(inst.trusted_root))).verify_dsse(
            bundle, policy.Identity(identity=inst.identity_of(DEFAULT_IDENTITY),
                                    issuer=inst.issuer_url),
        )
        # CLI: python -m sigstore --trust-config {inst.trust_config} verify identity
        #      --bundle B --cert-identity ... --cert-oidc-issuer {inst.issuer_url} SUBJECT_FILE
        # with env={**os.environ, **inst.environ}

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
