"""The admin page under ``/admin`` and the incident admin API under ``/admin/api``.

**The page** (server-rendered with jinja2, one stylesheet and one small script served by the guard
itself: no third-party asset, it works offline): open incidents with their evidence, an incident's
verified timeline, flagged clients and active mitigations (lift one), keys (list, revoke), the live
SLIs with each privacy SLO's error budget, and the latest audit verdict per model from the history
store. Ack / resolve / lift / revoke are forms.

**Sign-in**: a key of an admin role (``incidents.admin_roles``, else ``detection.admin_roles``) is
posted once to ``/admin/login``; the answer sets a session cookie (``HttpOnly``, ``SameSite=Strict``,
``Path=/admin``, ``Secure`` behind https) holding the key's SHA-256, an expiry and a MAC under a
secret derived from the guard's HMAC secret (so every worker accepts it, and a revoked key ends its
sessions at the next request). Nothing else is stored.

**CSRF**: every form carries a token, ``HMAC(secret, "csrf" || session)``, checked in constant time;
a POST whose ``Origin`` (or ``Referer``) is another origin is refused before that, and the cookie is
``SameSite=Strict`` besides. Responses carry a strict Content-Security-Policy (``default-src
'self'``, no inline script), ``X-Frame-Options: DENY`` and ``Cache-Control: no-store``.

**The API** (JSON; the admin key in the usual header, no cookie, so no CSRF surface):
``GET /admin/api/incidents[?state=]``, ``GET /admin/api/incidents/{id}``,
``POST /admin/api/incidents/{id}/ack`` and ``.../resolve`` with ``{"note": "..."}``,
``GET /admin/api/slis``; ``GET /admin/api/canary`` (the canary's state, routing and last comparison)
and ``POST /admin/api/canary/enable`` or ``.../rollback`` with ``{"note": "..."}``.

Every sign-in (accepted or refused) and every action writes an audit record; incident transitions
also get theirs from the on-call loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from invguard.guard.incidents import IncidentError, iso

COOKIE = "invguard_admin"
_HERE = Path(__file__).parent
_STATIC = {"admin.css": "text/css; charset=utf-8", "admin.js": "text/javascript; charset=utf-8"}
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


def _finite(v: Any) -> Any:
    import math

    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_finite(x) for x in v]
    return v


class AdminPage:
    def __init__(self, guard: Any, *, session_seconds: float = 8 * 3600, clock: Any = time.time) -> None:
        import jinja2

        self.g = guard
        self.clock = clock
        self.session_seconds = session_seconds
        inc = guard.cfg.incidents
        roles = tuple(inc.admin_roles) if inc is not None and inc.admin_roles else ()
        if not roles and getattr(guard.cfg, "detection", None) is not None:
            roles = tuple(guard.cfg.detection.admin_roles)
        self.roles = frozenset(roles)
        self.secret = hmac.digest(guard._hkey, b"invguard-admin-session-v1", "sha256")
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(_HERE / "templates")),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
        )
        self.env.filters["iso"] = iso
        self.env.filters["json"] = lambda v: json.dumps(v, sort_keys=True)
        self.static = {n: (_HERE / "static" / n).read_bytes() for n in _STATIC}

    def routes(self) -> list[Route]:
        return [
            Route("/admin", self.page, methods=["GET"]),
            Route("/admin/login", self.login, methods=["POST"]),
            Route("/admin/logout", self.logout, methods=["POST"]),
            Route("/admin/static/{name}", self.asset, methods=["GET"]),
            Route("/admin/incidents/{id:int}", self.incident_page, methods=["GET"]),
            Route("/admin/incidents/{id:int}/{action}", self.incident_action, methods=["POST"]),
            Route("/admin/mitigations/{client}/lift", self.lift, methods=["POST"]),
            Route("/admin/keys/{key_id}/revoke", self.revoke, methods=["POST"]),
            Route("/admin/canary/{action}", self.canary_action, methods=["POST"]),
            Route("/admin/api/incidents", self.api_incidents, methods=["GET"]),
            Route("/admin/api/incidents/{id:int}", self.api_incident, methods=["GET"]),
            Route("/admin/api/incidents/{id:int}/{action}", self.api_action, methods=["POST"]),
            Route("/admin/api/slis", self.api_slis, methods=["GET"]),
            Route("/admin/api/canary", self.api_canary, methods=["GET"]),
            Route("/admin/api/canary/{action}", self.api_canary_action, methods=["POST"]),
        ]

    # ------------------------------------------------------------------ sessions
    def _mac(self, payload: str) -> str:
        return hmac.new(self.secret, payload.encode(), hashlib.sha256).hexdigest()

    def _session_value(self, key_sha256: str) -> str:
        payload = f"{key_sha256}.{int(self.clock() + self.session_seconds)}"
        return f"{payload}.{self._mac(payload)}"

    def csrf(self, session: str) -> str:
        return self._mac("csrf." + session)

    def _session(self, request: Request) -> tuple[Any, str] | None:
        """The admin principal of a valid session cookie, and the cookie."""
        value = request.cookies.get(COOKIE)
        if not value or value.count(".") != 2:
            return None
        digest, exp, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(f"{digest}.{exp}")):
            return None
        if not exp.isdigit() or int(exp) < self.clock():
            return None
        principal = self.g.auth.by_hash(digest)
        if principal is None or principal.role not in self.roles:
            return None  # the key was revoked, or its role is no longer an admin role
        return principal, value

    def _key_principal(self, request: Request) -> tuple[Any, str]:
        principal, reason = self.g.auth.authenticate(request.scope["headers"])
        if principal is None:
            return None, reason
        if principal.role not in self.roles:
            return (
                None,
                f"role {principal.role!r} may not use the admin page (admin roles: {sorted(self.roles)})",
            )
        return principal, ""

    def _same_origin(self, request: Request) -> bool:
        """A POST from a page of this guard: Origin (or, without it, Referer) names this host."""
        origin = request.headers.get("origin") or request.headers.get("referer")
        if not origin or origin == "null":
            return False
        u = urlsplit(origin)
        return u.netloc == request.headers.get("host", "") and u.scheme in ("http", "https")

    async def _audit(
        self, request: Request, principal: Any, decision: str, status: int, **extra: Any
    ) -> None:
        from invguard.guard.pipeline import record_template

        rec = record_template(self.g._hkey, None)
        route = request.scope.get("route")
        rec.update(
            {
                "client": None if principal is None else principal.client_id,
                "role": None if principal is None else principal.role,
                "route": getattr(route, "path", request.url.path),
                "status": status,
                "decision": decision,
                **extra,
            }
        )
        await self.g.append(rec)

    def _headers(self, r: Response) -> Response:
        r.headers["Content-Security-Policy"] = _CSP
        r.headers["X-Frame-Options"] = "DENY"
        r.headers["X-Content-Type-Options"] = "nosniff"
        r.headers["Cache-Control"] = "no-store"
        r.headers["Referrer-Policy"] = "same-origin"
        return r

    def _html(self, template: str, status: int = 200, **ctx: Any) -> Response:
        ctx.setdefault("model", self.g.model_name)
        html = self.env.get_template(template).render(**ctx)
        return self._headers(HTMLResponse(html, status_code=status))

    def _login_page(self, status: int = 200, error: str | None = None) -> Response:
        return self._html("login.html", status, error=error)

    async def _form_guard(self, request: Request) -> tuple[Any, dict[str, str], Response | None]:
        """A state-changing form POST: same origin, a valid session, the session's CSRF token."""
        if not self._same_origin(request):
            await self._audit(request, None, "forbidden", 403, reason="cross-origin")
            return (
                None,
                {},
                self._html("error.html", 403, message="refused: the request did not come from this page"),
            )
        s = self._session(request)
        if s is None:
            await self._audit(request, None, "unauthorized", 401)
            return None, {}, self._login_page(401, "sign in first")
        principal, cookie = s
        form = await self._form(request)
        if not hmac.compare_digest(form.get("csrf", ""), self.csrf(cookie)):
            await self._audit(request, principal, "forbidden", 403, reason="csrf")
            return None, {}, self._html("error.html", 403, message="refused: missing or wrong form token")
        return principal, form, None

    async def _form(self, request: Request) -> dict[str, str]:
        """An ``application/x-www-form-urlencoded`` body (bounded by ``server.max_body_bytes``)."""
        from urllib.parse import parse_qsl

        if (
            request.headers.get("content-type", "").split(";")[0].strip()
            != "application/x-www-form-urlencoded"
        ):
            return {}
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > self.g.max_body:
                return {}
        return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))

    # ------------------------------------------------------------------ page
    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return self._headers(Response("not found", 404, media_type="text/plain"))
        return self._headers(Response(self.static[name], media_type=_STATIC[name]))

    async def login(self, request: Request) -> Response:
        problem = await self.g.auth.refresh()
        if problem is not None:
            return self._login_page(503, problem)
        if not self._same_origin(request):
            await self._audit(request, None, "forbidden", 403, reason="cross-origin")
            return self._html("error.html", 403, message="refused: the request did not come from this page")
        form = await self._form(request)
        key = form.get("key", "").strip()
        principal = None
        reason = "enter an admin API key"
        if key:
            principal, reason = self.g.auth.authenticate([(b"x-api-key", key.encode("latin-1", "replace"))])
            if principal is not None and principal.role not in self.roles:
                reason = f"role {principal.role!r} may not use the admin page"
                await self._audit(request, principal, "forbidden", 403)
                return self._login_page(403, reason)
        if principal is None:
            await self._audit(request, None, "unauthorized", 401)
            return self._login_page(401, reason)
        await self._audit(request, principal, "admin_login", 303)
        r = RedirectResponse("/admin", status_code=303)
        r.set_cookie(
            COOKIE,
            self._session_value(hashlib.sha256(key.encode()).hexdigest()),
            max_age=int(self.session_seconds),
            path="/admin",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return self._headers(r)

    async def logout(self, request: Request) -> Response:
        principal, _, refused = await self._form_guard(request)
        if refused is not None:
            return refused
        await self._audit(request, principal, "admin_logout", 303)
        r = RedirectResponse("/admin", status_code=303)
        r.delete_cookie(COOKIE, path="/admin")
        return self._headers(r)

    async def _context(self, principal: Any, cookie: str) -> dict[str, Any]:
        oc = self.g.oncall
        store = oc.store
        incidents = await asyncio.to_thread(store.find, state="active") if store is not None else []
        flagged = await self.g.detection.flagged() if self.g.detection is not None else []
        keys: list[dict[str, Any]] = [
            {"id": k.id, "role": k.role, "owner": None, "created": "", "state": "config", "revocable": False}
            for k in self.g.cfg.auth.keys
        ]
        ks = self.g.auth.store
        if ks is not None:
            for k in await asyncio.to_thread(ks.list):
                keys.append(
                    {
                        "id": k.id,
                        "role": k.role,
                        "owner": k.owner,
                        "created": k.created,
                        "state": "revoked" if k.revoked else "active",
                        "revocable": not k.revoked,
                    }
                )
        audits = []
        if self.g.cfg.incidents is not None and self.g.cfg.incidents.history:
            from invguard.guard.oncall import AuditHistoryCollector

            audits = await asyncio.to_thread(AuditHistoryCollector(self.g.cfg.incidents.history).latest)
        return {
            "me": principal,
            "csrf": self.csrf(cookie),
            "model": self.g.model_name,
            "model_version": oc.model_version,
            "incidents": incidents,
            "flagged": flagged,
            "keys": keys,
            "slis": self.slis(),
            "audits": audits,
            "store": store is not None,
            "canary": _finite(self.g.canary.status()) if self.g.canary is not None else None,
        }

    async def page(self, request: Request) -> Response:
        s = self._session(request)
        if s is None:
            return self._login_page()
        return self._html("admin.html", **(await self._context(*s)))

    async def incident_page(self, request: Request) -> Response:
        s = self._session(request)
        if s is None:
            return self._login_page(401, "sign in first")
        store = self.g.oncall.store
        if store is None:
            return self._html("error.html", 404, message="no incident store is configured (incidents.store)")
        iid = request.path_params["id"]
        try:
            inc = await asyncio.to_thread(store.get, iid)
            trans = await asyncio.to_thread(store.transitions, iid)
        except IncidentError as e:
            return self._html("error.html", 404, message=str(e))
        timeline, problem = await asyncio.to_thread(self._timeline, store, iid)
        ctx = await self._context(*s)
        return self._html(
            "incident.html", **ctx, inc=inc, transitions=trans, timeline=timeline, problem=problem
        )

    def _timeline(self, store: Any, iid: int) -> tuple[Any, str | None]:
        """The incident's timeline from this guard's own log, verified with its own keys."""
        from invguard.core.errors import InvguardError
        from invguard.guard import timeline as tl
        from invguard.guard.auditlog import public_hex

        try:
            q = tl.for_incident(store, iid)
            t = tl.build(
                self.g.cfg.audit.path,
                public_key=public_hex(self.g.audit.key),
                chain_key=self.g.audit.chain_key,
                allow_missing_head=True,
                **q,
            )
            return t, None
        except InvguardError as e:
            return None, str(e)

    async def incident_action(self, request: Request) -> Response:
        principal, form, refused = await self._form_guard(request)
        if refused is not None:
            return refused
        iid, action = request.path_params["id"], request.path_params["action"]
        status, message = await self._transition(principal, iid, action, form.get("note", ""))
        await self._audit(request, principal, f"admin_{action}", status, incident=iid)
        if status != 200:
            return self._html("error.html", status, message=message)
        return self._headers(RedirectResponse("/admin", status_code=303))

    async def _transition(self, principal: Any, iid: int, action: str, note: str) -> tuple[int, str]:
        store = self.g.oncall.store
        if store is None:
            return 404, "no incident store is configured (incidents.store)"
        by = principal.client_id
        try:
            if action == "ack":
                inc = await asyncio.to_thread(store.acknowledge, iid, by, note)
            elif action == "resolve":
                inc = await asyncio.to_thread(store.resolve, iid, by, note)
            else:
                return 404, f"no action {action!r}; use ack or resolve"
        except IncidentError as e:
            return (404 if "no incident" in str(e) else 409), str(e)
        return 200, f"incident #{inc.id} {inc.state}"

    async def lift(self, request: Request) -> Response:
        principal, _, refused = await self._form_guard(request)
        if refused is not None:
            return refused
        client = request.path_params["client"]
        if self.g.detection is None:
            return self._html("error.html", 404, message="detection is not enabled on this guard")
        m = await self.g.detection.lift(client, by=principal.client_id)
        if m is None:
            return self._html("error.html", 404, message=f"client {client!r} has no mitigation in force")
        return self._headers(RedirectResponse("/admin", status_code=303))

    async def revoke(self, request: Request) -> Response:
        principal, _, refused = await self._form_guard(request)
        if refused is not None:
            return refused
        from invguard.core.errors import InvguardError

        key_id = request.path_params["key_id"]
        ks = self.g.auth.store
        if ks is None:
            return self._html("error.html", 404, message="keys come from the config file: revoke them there")
        try:
            await asyncio.to_thread(ks.revoke, key_id)
        except InvguardError as e:
            await self._audit(request, principal, "admin_revoke", 404, target=key_id)
            return self._html("error.html", 404, message=str(e))
        self.g.auth.reload()
        await self._audit(request, principal, "admin_revoke", 303, target=key_id)
        return self._headers(RedirectResponse("/admin", status_code=303))

    async def canary_action(self, request: Request) -> Response:
        """The page's Re-enable / Roll back form."""
        principal, form, refused = await self._form_guard(request)
        if refused is not None:
            return refused
        status, message = await self._canary_change(
            principal, request.path_params["action"], form.get("note")
        )
        await self._audit(request, principal, f"admin_canary_{request.path_params['action']}", status)
        if status != 200:
            return self._html("error.html", status, message=message)
        return self._headers(RedirectResponse("/admin", status_code=303))

    async def _canary_change(self, principal: Any, action: str, note: Any) -> tuple[int, Any]:
        """(status, the new state or the error message) of a canary change by hand."""
        from invguard.guard.canary import CanaryError

        canary = self.g.canary
        if canary is None:
            return 404, "no canary is configured (canary:)"
        if action not in ("enable", "rollback"):
            return 404, f"no action {action!r}; use enable or rollback"
        if not isinstance(note, str):
            return 400, 'the body must be JSON: {"note": "..."}'
        fn = canary.store.enable if action == "enable" else canary.store.roll_back_by_hand
        try:
            st = await asyncio.to_thread(fn, canary.model_name, principal.client_id, note)
        except CanaryError as e:
            return 409, str(e)
        canary.follow(st)  # this process at once; other workers at their next tick
        return 200, st

    # ------------------------------------------------------------------ the API
    def slis(self) -> dict[str, Any]:
        """The counter SLIs and the SLOs' last evaluation (non-finite numbers as None: JSON-safe)."""
        from invguard.guard.slo import counter_totals

        totals = counter_totals(self.g.registry)
        slo = self.g.oncall.slo
        doc = {
            "slis": {
                k: {"bad": b, "total": t, "ratio": (b / t if t else None)} for k, (b, t) in totals.items()
            },
            "slos": list(slo.last.values()) if slo is not None else [],
        }
        out: dict[str, Any] = _finite(doc)
        return out

    async def _api_principal(self, request: Request) -> tuple[Any, Response | None]:
        problem = await self.g.auth.refresh()
        if problem is not None:
            return None, JSONResponse({"code": "auth_unavailable", "error": problem}, 503)
        if request.method == "GET" and request.cookies.get(COOKIE):
            s = self._session(request)
            if s is not None:
                return s[0], None
        principal, reason = self._key_principal(request)
        if principal is None:
            status = 403 if reason.startswith("role ") else 401
            await self._audit(request, None, "forbidden" if status == 403 else "unauthorized", status)
            return None, JSONResponse(
                {"code": "forbidden" if status == 403 else "unauthorized", "error": reason}, status
            )
        return principal, None

    async def _api_store(self, request: Request) -> tuple[Any, Response | None]:
        """The incident store for an authorised API request, or the refusal."""
        _principal, refused = await self._api_principal(request)
        if refused is not None:
            return None, refused
        store = self.g.oncall.store
        if store is None:
            return None, JSONResponse({"code": "not_found", "error": "no incident store is configured"}, 404)
        return store, None

    async def api_incidents(self, request: Request) -> Response:
        store, refused = await self._api_store(request)
        if refused is not None:
            return refused
        state = request.query_params.get("state", "active")
        try:
            rows = await asyncio.to_thread(store.find, state=None if state == "all" else state)
        except IncidentError as e:
            return JSONResponse({"code": "bad_request", "error": str(e)}, 400)
        return JSONResponse({"incidents": [i.to_dict() for i in rows]})

    async def api_incident(self, request: Request) -> Response:
        store, refused = await self._api_store(request)
        if refused is not None:
            return refused
        iid = request.path_params["id"]
        try:
            inc = await asyncio.to_thread(store.get, iid)
            trans = await asyncio.to_thread(store.transitions, iid)
        except IncidentError as e:
            return JSONResponse({"code": "not_found", "error": str(e)}, 404)
        return JSONResponse(inc.to_dict() | {"transitions": [t.to_dict() for t in trans]})

    async def api_action(self, request: Request) -> Response:
        if request.cookies.get(COOKIE) and not request.headers.get(self.g.auth.header_name.lower()):
            # a browser with a session: the API is for keys, forms are for sessions (CSRF)
            return JSONResponse({"code": "forbidden", "error": "use the admin key header, not a cookie"}, 403)
        principal, refused = await self._api_principal(request)
        if refused is not None:
            return refused
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            return JSONResponse(
                {"code": "bad_request", "error": 'the body must be JSON: {"note": "..."}'}, 400
            )
        note = body.get("note", "") if isinstance(body, dict) else ""
        if not isinstance(note, str):
            return JSONResponse({"code": "bad_request", "error": "note must be a string"}, 400)
        iid, action = request.path_params["id"], request.path_params["action"]
        status, message = await self._transition(principal, iid, action, note)
        await self._audit(request, principal, f"admin_{action}", status, incident=iid)
        if status != 200:
            return JSONResponse(
                {"code": "conflict" if status == 409 else "not_found", "error": message}, status
            )
        store = self.g.oncall.store
        inc = await asyncio.to_thread(store.get, iid)
        return JSONResponse(inc.to_dict())

    async def api_slis(self, request: Request) -> Response:
        _principal, refused = await self._api_principal(request)
        if refused is not None:
            return refused
        return JSONResponse(self.slis())

    async def api_canary(self, request: Request) -> Response:
        _principal, refused = await self._api_principal(request)
        if refused is not None:
            return refused
        canary = self.g.canary
        if canary is None:
            return JSONResponse({"code": "not_found", "error": "no canary is configured (canary:)"}, 404)
        st = await asyncio.to_thread(canary.store.require, canary.model_name)
        doc = canary.status() | {"stored_state": st.state, "stored_generation": st.generation}
        return JSONResponse(_finite(doc))

    async def api_canary_action(self, request: Request) -> Response:
        """Re-enable a rolled-back canary, or roll it back, by hand (the on-call loop writes the
        audit-log record of the change)."""
        if request.cookies.get(COOKIE) and not request.headers.get(self.g.auth.header_name.lower()):
            return JSONResponse({"code": "forbidden", "error": "use the admin key header, not a cookie"}, 403)
        principal, refused = await self._api_principal(request)
        if refused is not None:
            return refused
        action = request.path_params["action"]
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        note = body.get("note") if isinstance(body, dict) else None
        status, out = await self._canary_change(principal, action, note)
        await self._audit(request, principal, f"admin_canary_{action}", status)
        if status != 200:
            code = {400: "bad_request", 404: "not_found", 409: "conflict"}[status]
            return JSONResponse({"code": code, "error": out}, status)
        return JSONResponse(_finite(out.to_dict()))
