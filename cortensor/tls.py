"""TLS for the connections to RabbitMQ, NATS and PostgreSQL, from the settings."""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING

from cortensor.errors import BadSetting

if TYPE_CHECKING:
    from cortensor.settings import Settings


def client_context(settings: Settings) -> ssl.SSLContext | None:
    """A context that verifies the servers against `tls_ca` and presents `tls_cert` when
    one is set; None when TLS is off (no `tls_ca`)."""
    if settings.tls_ca is None:
        if settings.tls_cert is not None:
            raise BadSetting("CORTENSOR_TLS_CERT needs CORTENSOR_TLS_CA, the servers' CA")
        return None
    try:
        context = ssl.create_default_context(cafile=str(settings.tls_ca))
        if settings.tls_cert is not None:
            context.load_cert_chain(
                str(settings.tls_cert), str(settings.tls_key) if settings.tls_key else None
            )
    except (OSError, ssl.SSLError) as exc:
        raise BadSetting(f"cannot load the TLS files (CORTENSOR_TLS_*): {exc}") from None
    return context
