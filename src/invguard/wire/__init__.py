"""Wire formats shared by the clients (the HTTP target, the guard's upstream client) and the guard's
server side: :mod:`.kserve` (KServe v2 / Open Inference Protocol), :mod:`.instances`
(``instances`` / ``predictions``), and :mod:`.urls` (what of a URL may be printed)."""

from invguard.wire import instances, kserve
from invguard.wire.urls import redact_text, redact_url

__all__ = ["instances", "kserve", "redact_text", "redact_url"]
