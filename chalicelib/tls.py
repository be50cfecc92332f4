"""``http.tls`` for `stratus serve`: the server's SSLContext, built once at start-up.

The reference registry's keys, as it reads them:

* ``certificate`` and ``key``: PEM files (the certificate file may carry the chain);
* ``clientcas``: CA files; a client must present a certificate one of them signed
  (mutual TLS). ``clientauth`` says how strictly: ``require-and-verify-client-cert``
  (the default once ``clientcas`` is set) or ``verify-client-cert-if-given``. The
  reference's two modes that accept an unverified certificate (``request-client-cert``,
  ``require-any-client-cert``) are refused: OpenSSL through Python verifies any
  certificate it asks for, and accepting one unverified is never what access control wants;
* ``minimumtls``: ``tls1.2`` (the default) or ``tls1.3``; ``tls1.0`` and ``tls1.1`` are
  refused (broken protocols, which OpenSSL 3 disables at its default security level anyway);
* ``ciphersuites``: Go's names of TLS 1.2 suites, translated to OpenSSL's; TLS 1.3's three
  suites are always on (Go does not let them be configured either).

``letsencrypt`` is refused by config.py: obtaining certificates over ACME is left to a
tool made for it (certbot, a reverse proxy), whose files ``certificate``/``key`` then name.

Nothing here imports ssl until a context is built: the config module reads the tables.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl

    from .config import TLSConfig

MINIMUM_TLS = ("tls1.2", "tls1.3")
REFUSED_MINIMUM_TLS = ("tls1.0", "tls1.1")
CLIENT_AUTH = ("require-and-verify-client-cert", "verify-client-cert-if-given")
REFUSED_CLIENT_AUTH = ("request-client-cert", "require-any-client-cert")

# Go's crypto/tls names (what the reference's ciphersuites takes) -> OpenSSL's, TLS 1.2 suites.
CIPHER_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_RSA_WITH_AES_128_CBC_SHA256": "AES128-SHA256",
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
}
# TLS 1.3's suites: always enabled, named only to be accepted.
TLS13_SUITES = ("TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256")


def server_context(tls: "TLSConfig") -> "ssl.SSLContext":
    """The SSLContext http.tls describes; ConfigError naming the key for a file that
    cannot be read or a suite this OpenSSL lacks."""
    import ssl

    from .config import ConfigError

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3 if tls.minimumtls == "tls1.3" else ssl.TLSVersion.TLSv1_2
    for name, path in (("certificate", tls.certificate), ("key", tls.key)):
        try:  # ssl's own error does not say which of the two files it could not open
            open(path, "rb").close()
        except OSError as exc:
            key = f"http.tls.{name}"
            raise ConfigError(f"{key}: cannot read {path}: {exc.strerror or exc}", key=key) from None
    try:
        context.load_cert_chain(tls.certificate, tls.key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"http.tls.certificate: {tls.certificate} and http.tls.key {tls.key} are not a PEM certificate "
            f"and its private key: {exc}", key="http.tls.certificate") from None
    for index, ca in enumerate(tls.clientcas):
        try:
            context.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            key = f"http.tls.clientcas.{index}"
            raise ConfigError(f"{key}: cannot load CA certificates from {ca}: {exc}", key=key) from None
    if tls.clientcas:
        optional = tls.clientauth == "verify-client-cert-if-given"
        context.verify_mode = ssl.CERT_OPTIONAL if optional else ssl.CERT_REQUIRED
    suites = [CIPHER_SUITES[name] for name in tls.ciphersuites if name in CIPHER_SUITES]
    if suites:
        try:
            context.set_ciphers(":".join(suites))
        except ssl.SSLError:
            raise ConfigError("http.tls.ciphersuites: none of these suites is available in this OpenSSL "
                              f"({ssl.OPENSSL_VERSION}): {', '.join(tls.ciphersuites)}",
                              key="http.tls.ciphersuites") from None
    return context


def describe(tls: Any) -> str:
    """What the start-up line says about TLS."""
    if tls is None:
        return "http"
    mutual = ", client certificates required" if tls.clientcas and tls.clientauth != "verify-client-cert-if-given" \
        else (", client certificates verified if given" if tls.clientcas else "")
    return f"https (minimum {tls.minimumtls}{mutual})"
