"""Wire formats shared by the clients (HTTP target, the guard's upstream client) and the guard."""

from invguard.wire.urls import redact_text, redact_url

__all__ = ["redact_text", "redact_url"]
