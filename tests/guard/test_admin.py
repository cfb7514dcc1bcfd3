"""The admin page in headless Chromium (Selenium): it renders with no console errors, acknowledging
and resolving an incident works, a non-admin key is refused, a forged cross-site POST is refused.
And the incident admin API with keys."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from invguard.guard.auth import KeyStore, hash_key
from invguard.guard.incidents import Detection, IncidentStore
from tests.guard.conftest import KEYS, base_config
from tests.programs import require

ADMIN_KEY = "k-admin-0123456789"


def admin_config(tmp_path):
    cfg = base_config(tmp_path)
    cfg["roles"]["admin"] = {"policy": "label_only"}
    cfg["auth"]["keys"].append({"id": "alice", "sha256": hash_key(ADMIN_KEY), "role": "admin"})
    cfg["auth"]["key_store"] = str(tmp_path / "keys.db")
    cfg["incidents"] = {"store": str(tmp_path / "incidents.db"), "admin_roles": ["admin"]}
    return cfg


def open_two(tmp_path):
    store = IncidentStore(tmp_path / "incidents.db")
    for client in ("acme", "zeta"):
        store.open(
            Detection(
                "detection",
                "knn",
                f"kNN probe from {client}",
                "digits",
                clients=[client],
                evidence={"seqs": [1, 2, 3]},
            )
        )
    return store


@pytest.fixture()
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = require("chromium", "chromium")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(require("chromedriver", "chromium-driver")), options=opts)
    driver.set_page_load_timeout(60)
    driver.implicitly_wait(10)  # a loaded machine: elements may take a moment
    try:
        yield driver
    finally:
        driver.quit()


def console_errors(driver):
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def wait(driver, cond):
    """Until the page the last click loaded shows ``cond`` (a form POST and its redirect)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # while the redirect loads, an element read from the old page goes stale: poll again
    ignored = (NoSuchElementException, StaleElementReferenceException)
    WebDriverWait(driver, 15, ignored_exceptions=ignored).until(cond)


def sign_in(driver, url, key):
    from selenium.webdriver.common.by import By

    driver.get(url + "/admin")
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.ID, "signin").click()


def test_admin_page_in_chromium(make_guard, tmp_path, browser):
    from selenium.webdriver.common.by import By

    KeyStore(tmp_path / "keys.db").add("partner", "acme-2")
    store = open_two(tmp_path)
    url, _guard = make_guard(admin_config(tmp_path))

    # a non-admin key is refused
    sign_in(browser, url, KEYS["partner"])
    wait(browser, lambda d: d.find_elements(By.ID, "error"))
    assert "role 'partner' may not use the admin page" in browser.find_element(By.ID, "error").text
    assert browser.get_cookie("invguard_admin") is None
    # the refusal is the page's only console entry (the 403 of the sign-in)
    assert [e["message"].split(" - ")[-1] for e in console_errors(browser)] == [
        "Failed to load resource: the server responded with a status of 403 (Forbidden)"
    ]

    sign_in(browser, url, ADMIN_KEY)
    wait(browser, lambda d: d.find_elements(By.ID, "me"))
    assert browser.find_element(By.ID, "me").text == "alice"
    cookie = browser.get_cookie("invguard_admin")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/admin"
    assert browser.find_element(By.ID, "incident-1") and browser.find_element(By.ID, "incident-2")
    keys = browser.find_element(By.ID, "keys").text
    assert "acme-2" in keys and "alice" in keys
    browser.execute_script("return document.readyState")
    assert console_errors(browser) == []

    # acknowledge #1, then resolve it with a note
    browser.find_element(By.ID, "ack-1").click()
    wait(browser, lambda d: "acknowledged" in d.find_element(By.CSS_SELECTOR, "#incident-1 .state").text)
    assert "acknowledged by alice" in browser.find_element(By.CSS_SELECTOR, "#incident-1 .state").text
    assert store.get(1).state == "acknowledged" and store.get(1).acked_by == "alice"
    browser.find_element(By.ID, "note-1").send_keys("false positive: load test")
    browser.find_element(By.ID, "resolve-1").click()
    wait(browser, lambda d: not d.find_elements(By.ID, "incident-1"))
    inc = store.get(1)
    assert (
        inc.state == "resolved"
        and inc.resolved_by == "alice"
        and inc.resolution == "false positive: load test"
    )
    assert not browser.find_elements(By.ID, "incident-1")

    # the incident's page with its timeline from the verified log
    browser.get(url + "/admin/incidents/2")
    assert browser.find_element(By.ID, "state").text == "open"
    assert browser.find_element(By.ID, "verified").text.startswith("OK: records seq 1-")
    assert console_errors(browser) == []

    # a forged cross-site POST (another site auto-submits a form to the guard): refused
    from starlette.applications import Starlette
    from starlette.responses import HTMLResponse
    from starlette.routing import Route

    from tests.servers import serve

    port = url.rsplit(":", 1)[1]
    evil = f"""<!doctype html><html><body>
      <form id="f" method="post" action="http://127.0.0.1:{port}/admin/incidents/2/resolve">
        <input name="note" value="attacker closed it"><input name="csrf" value="guess"></form>
      <script>document.getElementById("f").submit()</script></body></html>"""

    async def page(request):
        return HTMLResponse(evil)

    with serve(Starlette(routes=[Route("/", page)])) as evil_url:
        browser.get(evil_url.replace("127.0.0.1", "localhost") + "/")
        wait(browser, lambda d: d.find_elements(By.ID, "error"))  # the guard's refusal page
        assert "refused" in browser.page_source
    assert store.get(2).state == "open"
    assert [e["message"].split(" - ")[0] for e in console_errors(browser)] == [
        f"{url}/admin/incidents/2/resolve"
    ]

    # the revocation form works too; then the admin signs out
    browser.get(url + "/admin")
    browser.execute_script("window.confirm = () => true")
    browser.find_element(By.CSS_SELECTOR, "#keys form.confirm button").click()
    wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, "#keys form.confirm"))
    assert [k.revoked for k in KeyStore(tmp_path / "keys.db").list()] == [True]
    assert "revoked" in browser.find_element(By.ID, "keys").text
    assert console_errors(browser) == []
    browser.find_element(By.ID, "logout").click()
    wait(browser, lambda d: d.find_elements(By.ID, "key"))
    assert browser.get_cookie("invguard_admin") is None


def post(url, path, *, data=b"", headers=None):
    req = urllib.request.Request(url + path, data=data, headers=headers or {}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def get(url, path, headers=None):
    req = urllib.request.Request(url + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_forms_need_origin_session_and_token_and_the_api_needs_an_admin_key(make_guard, tmp_path):
    store = open_two(tmp_path)
    url, _guard = make_guard(admin_config(tmp_path))
    host = url.split("//")[1]
    # sign in (same origin): the session cookie
    req = urllib.request.Request(
        url + "/admin/login",
        data=f"key={ADMIN_KEY}".encode(),
        method="POST",
        headers={"Origin": url, "Content-Type": "application/x-www-form-urlencoded"},
    )

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *a, **kw):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as e:
        opener.open(req, timeout=10)
    assert e.value.code == 303
    cookie = e.value.headers["Set-Cookie"].split(";")[0]
    assert cookie.startswith("invguard_admin=")
    form = {"Cookie": cookie, "Content-Type": "application/x-www-form-urlencoded"}
    # the session's page carries the form token
    status, html = get(url, "/admin", {"Cookie": cookie})
    assert status == 200 and 'name="csrf" value="' in html
    token = html.split('name="csrf" value="')[1].split('"')[0]
    # no Origin / another origin / no token / a wrong token: refused, incident untouched
    assert post(url, "/admin/incidents/1/ack", data=f"csrf={token}".encode(), headers=form)[0] == 403
    assert (
        post(
            url,
            "/admin/incidents/1/ack",
            data=f"csrf={token}".encode(),
            headers={**form, "Origin": "http://evil.example"},
        )[0]
        == 403
    )
    assert post(url, "/admin/incidents/1/ack", data=b"note=x", headers={**form, "Origin": url})[0] == 403
    assert (
        post(url, "/admin/incidents/1/ack", data=b"csrf=" + b"0" * 64, headers={**form, "Origin": url})[0]
        == 403
    )
    assert store.get(1).state == "open"
    # with all three: done
    assert (
        post(url, "/admin/incidents/1/ack", data=f"csrf={token}".encode(), headers={**form, "Origin": url})[0]
        == 200
    )
    assert store.get(1).acked_by == "alice"
    # a forged cookie is no session
    bad = cookie[:-4] + "0000"
    assert get(url, "/admin", {"Cookie": bad})[1].count('id="key"') == 1

    # the API: keys only; a partner key is refused; an admin key acts
    assert get(url, "/admin/api/incidents", {"X-API-Key": KEYS["partner"]})[0] == 403
    assert get(url, "/admin/api/incidents")[0] == 401
    status, body = get(url, "/admin/api/incidents", {"X-API-Key": ADMIN_KEY})
    assert status == 200 and [i["id"] for i in json.loads(body)["incidents"]] == [2, 1]
    js = {"X-API-Key": ADMIN_KEY, "Content-Type": "application/json"}
    status, body = post(url, "/admin/api/incidents/2/resolve", data=b'{"note": ""}', headers=js)
    assert status == 409 and "needs a note" in body
    status, body = post(url, "/admin/api/incidents/2/resolve", data=b'{"note": "revoked"}', headers=js)
    assert status == 200 and json.loads(body)["state"] == "resolved"
    # a cookie alone never drives the API (no CSRF surface there)
    assert (
        post(
            url,
            "/admin/api/incidents/1/resolve",
            data=b'{"note": "x"}',
            headers={"Cookie": cookie, "Origin": url, "Content-Type": "application/json"},
        )[0]
        == 403
    )
    assert host
    status, body = get(url, "/admin/api/slis", {"X-API-Key": ADMIN_KEY})
    assert status == 200 and "audit_fidelity" in json.loads(body)["slis"]
