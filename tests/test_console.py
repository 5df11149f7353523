"""The operator console in a real browser (headless Chromium through Selenium) against
`gridpilot demo` as a user runs it: signing in, the live overview, what a viewer may not do,
setpoints applied and refused, an alarm acknowledged, and a screenshot of the page.

Chromium and its driver are Debian packages (`chromium`, `chromium-driver`) that `make test`
installs; without them these tests fail, they do not skip. The screenshots go to pytest's
temporary folder (its path is printed), or to $GRIDPILOT_SCREENSHOTS."""

from __future__ import annotations

import base64
import itertools
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from controller.sitefile import load_site
from tests.processes import gridpilot, wait_http
from tests.sites import site_dict

ADMIN_KEY = "console-test-admin-key-0123456789"  # the demo's key, as GRIDPILOT_API_KEY gives it
WAIT_S = 15.0  # a loaded 2-core machine: a change goes through the controller first


@dataclass
class Demo:
    base: str
    period_s: float
    keys: dict[str, str]  # role → key
    names: dict[str, str]  # role → key name

    def api(self, role: str = "admin") -> httpx.Client:
        auth = {"Authorization": f"Bearer {self.keys[role]}"}
        return httpx.Client(base_url=self.base, headers=auth, timeout=5.0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """One `gridpilot demo` for the module, on free ports, with a viewer and an operator key
    made through the API with the admin key."""
    tmp = tmp_path_factory.mktemp("console-demo")
    site_file = tmp / "site.yaml"
    site_file.write_text(yaml.safe_dump(site_dict(tmp / "data")))
    site = load_site(site_file)
    base = f"http://127.0.0.1:{site.api_port}"
    env = {"GRIDPILOT_API_KEY": ADMIN_KEY}
    with gridpilot("demo", "--config", str(site_file), env=env) as proc:
        wait_http(f"{base}/readyz", proc)
        keys, names = {"admin": ADMIN_KEY}, {"admin": "demo-admin"}
        with httpx.Client(base_url=base, timeout=5.0) as client:
            for role in ("viewer", "operator"):
                names[role] = f"console {role}"
                r = client.post(
                    "/v1/keys",
                    json={"name": names[role], "role": role},
                    headers={"Authorization": f"Bearer {ADMIN_KEY}"},
                )
                assert r.status_code == 201, r.text
                keys[role] = r.json()["key"]
        yield Demo(base, site.loop_period_s, keys, names)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr[-2000:]


def _executable(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else "")
    if not path:
        pytest.fail(
            f"{name} is missing: `make test` installs it (Debian packages chromium and "
            "chromium-driver); these tests need a real browser",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def browser(demo: Demo) -> Iterator[webdriver.Chrome]:
    options = Options()
    options.binary_location = _executable("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--window-size=1600,1000"):  # fmt: skip
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(_executable("chromedriver")), options=options)
    try:
        driver.get(demo.base + "/")
        yield driver
    finally:
        driver.quit()


def until(driver: webdriver.Chrome, condition: Callable[[], Any], what: str) -> Any:
    """The condition's first truthy value, or a failure naming what never happened."""
    try:
        return WebDriverWait(
            driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
        ).until(lambda _: condition())
    except TimeoutException:
        raise AssertionError(
            f"timed out waiting for {what}; the page says: {said(driver)}"
        ) from None


def said(driver: webdriver.Chrome) -> str:
    """What the page shows of errors and notices (for a failure's message)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('.error:not([hidden]), .field-error:not([hidden]),"
        " .toast, #link')].map((e) => (e.id || e.className) + ': ' + e.textContent.trim())"
        ".join(' | ')"
    )


def click(driver: webdriver.Chrome, css: str, what: str) -> None:
    """Click the element `css` finds; the panels redraw, so find it again if it went."""

    def clicked() -> bool:
        element = driver.find_element(By.CSS_SELECTOR, css)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
        element.click()
        return True

    until(driver, clicked, what)


def by_id(driver: webdriver.Chrome, element_id: str) -> WebElement:
    return driver.find_element(By.ID, element_id)


def sign_in(driver: webdriver.Chrome, demo: Demo, role: str) -> None:
    """Signed in with `role`'s key (signing out first if another key is in)."""
    if by_id(driver, "console").is_displayed():
        if driver.find_element(By.CSS_SELECTOR, "#who .role").text.lower() == role:
            return
        by_id(driver, "signout").click()
    key = by_id(driver, "signin-key")
    until(driver, key.is_displayed, "the sign-in form")
    key.clear()
    key.send_keys(demo.keys[role])
    by_id(driver, "signin-submit").click()
    until(driver, lambda: by_id(driver, "console").is_displayed(), "the console")
    shown = lambda: driver.find_element(By.CSS_SELECTOR, "#who .role").text.lower()  # noqa: E731
    until(driver, lambda: shown() == role, f"the {role} role shown")


def setpoint_row(driver: webdriver.Chrome, field: str) -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'.sp-row[data-field="{field}"]')


def type_into(element: WebElement, value: str) -> None:
    """Empty the field and type, with the keys an operator uses: WebDriver's clear() fires no
    input event, so the console did not know the field was being edited and its 5 s refresh
    could put the value in force back before the keys came ("500-5")."""
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(Keys.DELETE)
    element.send_keys(value)
    assert element.get_attribute("value") == value  # nothing the page did got in between


# ---- the page and its files --------------------------------------------------------------


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.refs += [v for k, v in attrs if k in ("src", "href") and v]


def test_the_page_needs_no_key_every_call_it_makes_does(demo: Demo):
    with httpx.Client(base_url=demo.base, timeout=5.0) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert page.headers["x-frame-options"] == "DENY"
        assert page.headers["x-content-type-options"] == "nosniff"
        refs = _Refs()
        refs.feed(page.text)
        assert refs.refs, "the page links its scripts and styles"
        for ref in refs.refs:  # nothing from elsewhere: no CDN, no internet needed
            assert ref.startswith("/ui/"), ref
            asset = client.get(ref)
            assert asset.status_code == 200, ref
        assert client.get("/ui/app.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/ui/vendor/uplot/LICENSE").status_code == 200
        assert client.get("/ui/nothing.js").status_code == 404
        assert client.get("/v1/state").status_code == 401  # the data still need a key
        assert client.get("/v1/stream").status_code == 401
        assert "/" not in client.get("/openapi.json").json()["paths"]
        assert client.head("/").status_code == 200
        refused = client.post("/")
        assert refused.status_code == 405 and refused.headers["allow"] == "GET, HEAD"


# ---- in the browser ----------------------------------------------------------------------


def test_a_wrong_key_is_refused_the_operator_signs_in(browser, demo: Demo):
    key = by_id(browser, "signin-key")
    until(browser, key.is_displayed, "the sign-in form")
    key.send_keys("gp_not-a-key")
    by_id(browser, "signin-submit").click()
    error = by_id(browser, "signin-error")
    until(browser, lambda: "not valid" in error.text, "the refusal")
    assert not by_id(browser, "console").is_displayed()
    sign_in(browser, demo, "operator")
    assert demo.names["operator"] in by_id(browser, "who").text
    assert not by_id(browser, "readonly").is_displayed()
    # The key is this tab's: session storage, not local storage nor a cookie.
    stored = browser.execute_script("return sessionStorage.getItem('gridpilot.key')")
    assert stored == demo.keys["operator"]
    assert browser.execute_script("return localStorage.length") == 0
    assert browser.get_cookies() == []


def test_grid_draw_is_live_and_matches_the_state_within_a_second(browser, demo: Demo):
    """The overview's grid draw is the stream's, at most a second behind /v1/state: each
    figure shown is the grid draw /v1/state gave for that tick."""
    sign_in(browser, demo, "operator")
    seen: dict[int, float] = {}  # tick → grid draw, as /v1/state said
    done = threading.Event()

    def watch_state() -> None:
        with demo.api("viewer") as api:
            while not done.is_set():
                state = api.get("/v1/state").json()
                seen[state["tick"]["seq"]] = state["measurements"]["grid_w"]
                time.sleep(0.03)

    watcher = threading.Thread(target=watch_state, daemon=True)
    watcher.start()
    read = "const t = document.getElementById('kpi-grid'); return [t.dataset.seq, t.dataset.w, t.querySelector('.num').textContent];"  # noqa: E501
    until(browser, lambda: browser.execute_script(read)[0], "a tick on the page")
    samples = []
    try:
        with demo.api("viewer") as api:
            for _ in range(12):
                seq, w, shown = browser.execute_script(read)
                latest = api.get("/v1/state").json()["tick"]["seq"]
                samples.append((int(seq), float(w), shown, latest))
                time.sleep(0.25)
    finally:
        done.set()
        watcher.join(5)
    seqs = [s[0] for s in samples]
    assert len(set(seqs)) >= 6 and seqs == sorted(seqs), f"the figure does not follow: {seqs}"
    behind = [latest - seq for seq, _, _, latest in samples]
    assert max(behind) * demo.period_s <= 1.0, f"ticks behind /v1/state: {behind}"
    matched = [(seq, w) for seq, w, _, _ in samples if seq in seen]
    assert len(matched) >= 3, "too few ticks seen by both"
    for seq, w in matched:
        assert w == seen[seq], f"tick {seq}: page {w} W, /v1/state {seen[seq]} W"
    for _, w, shown, _ in samples:
        assert shown == f"{w / 1e6:.2f}", (shown, w)  # in MW, as the unit beside it says
    assert by_id(browser, "kpi-grid").find_element(By.CLASS_NAME, "unit").text == "MW"


def test_an_operator_applies_a_ramp_limit_and_sees_it_in_the_audit_log(browser, demo: Demo):
    sign_in(browser, demo, "operator")
    field = by_id(browser, "sp-ramp_up_w_per_s")
    until(browser, lambda: field.get_attribute("value") == "500", "the ramp limit in kW/s")
    assert "kW/s" in setpoint_row(browser, "ramp_up_w_per_s").text
    type_into(field, "250")
    type_into(by_id(browser, "sp-ttl"), "30")  # for half an hour
    apply = by_id(browser, "sp-apply")
    assert apply.is_enabled() and apply.text == "Apply 1 change"
    apply.click()
    with demo.api("viewer") as api:
        until(
            browser,
            lambda: api.get("/v1/setpoints").json()["ramp_up_w_per_s"] == 250_000,
            "the new ramp limit in force",
        )
        override = api.get("/v1/setpoints").json()["override"]
    assert override["temporary"][0]["changes"] == {"ramp_up_w_per_s": 250_000}
    row = setpoint_row(browser, "ramp_up_w_per_s")
    until(browser, lambda: "until" in row.text and "250" in row.text, "the temporary value")
    audit = by_id(browser, "audit")

    def change_row() -> str | None:  # the row's text: the table is redrawn as entries arrive
        for tr in audit.find_elements(By.TAG_NAME, "tr"):
            text = tr.text
            if "setpoints.change" in text and "ramp_up_w_per_s" in text:
                return text
        return None

    text = until(browser, change_row, "the change in the audit log")
    assert demo.names["operator"] in text
    assert "500000" in text and "250000" in text
    assert "setpoints.ttl" in audit.text
    limits = by_id(browser, "limits")
    until(browser, lambda: "250 kW/s" in limits.text, "the ramp limit in force on the overview")
    by_id(browser, "sp-ttl").clear()


def test_a_refused_value_is_shown_at_its_field_and_changes_nothing(browser, demo: Demo):
    sign_in(browser, demo, "operator")
    with demo.api("operator") as api:
        before = api.get("/v1/setpoints").json()
        # What the API itself says of this value (a refused change changes nothing).
        said = api.patch("/v1/setpoints", json={"ramp_down_w_per_s": -5000}).json()
    message = said["errors"][0]["message"]
    type_into(by_id(browser, "sp-ramp_down_w_per_s"), "-5")  # kW/s
    by_id(browser, "sp-apply").click()
    row = setpoint_row(browser, "ramp_down_w_per_s")
    error = row.find_element(By.CLASS_NAME, "field-error")
    until(browser, error.is_displayed, "the refusal at the field")
    assert message in error.text and "-5000" in error.text, error.text
    assert "invalid" in row.get_attribute("class")
    assert "Invalid request" in by_id(browser, "setpoints-error").text

    # A rule across fields: the API names no field, its message does.
    by_id(browser, "sp-reset").click()
    until(browser, lambda: not error.is_displayed(), "the error cleared")
    type_into(by_id(browser, "sp-soc_target_low_ratio"), "90")  # %, above the band's top
    by_id(browser, "sp-apply").click()
    band = setpoint_row(browser, "soc_target_low_ratio").find_element(By.CLASS_NAME, "field-error")
    until(browser, band.is_displayed, "the rule's refusal at the field it names")
    assert "must not be above soc_target_high_ratio" in band.text
    with demo.api("viewer") as api:
        after = api.get("/v1/setpoints").json()
    assert after == before
    by_id(browser, "sp-reset").click()


def test_an_alarm_is_raised_by_a_shed_event_and_acknowledged(browser, demo: Demo):
    """A demand-response shed event (scheduled in the console) raises a `shed request`
    alarm; the operator acknowledges it; cancelling the event clears it."""
    sign_in(browser, demo, "operator")
    Select(by_id(browser, "ev-kind")).select_by_value("shed")
    type_into(by_id(browser, "ev-value"), "0.5")  # MW
    type_into(by_id(browser, "ev-duration"), "10")  # min
    by_id(browser, "ev-submit").click()
    events = by_id(browser, "events")
    until(browser, lambda: "running" in events.text, "the event running")
    assert "0.50 MW" in events.text
    active = by_id(browser, "alarms-active")

    def shed_alarm() -> WebElement | None:
        found = active.find_elements(By.CSS_SELECTOR, '.alarm[data-key="shed_request"]')
        return found[0] if found else None

    alarm_id, text = until(
        browser,
        lambda: (a := shed_alarm()) and (int(a.get_attribute("data-id")), a.text),
        "the shed request alarm",
    )  # read at once: the list is redrawn each second
    assert "shed 500000 W" in text
    click(browser, '.alarm[data-key="shed_request"] button.ack', "the acknowledge button")
    until(
        browser,
        lambda: (a := shed_alarm()) is not None and "acknowledged by" in a.text,
        "the acknowledgement",
    )
    for role, shown in (("operator", demo.names["operator"]), ("viewer", "(a key)")):
        with demo.api(role) as api:  # a viewer sees that a key acknowledged it, not which
            listed = api.get("/v1/alarms?active=true").json()["alarms"]
        assert {a["id"]: a for a in listed}[alarm_id]["acked_by"].startswith(shown)
    until(browser, lambda: "alarm.ack" in by_id(browser, "audit").text, "the ack, audited")

    click(browser, "#events tr.ev-running button", "the event's cancel button")  # ends now
    recent = by_id(browser, "alarms-recent")
    until(browser, lambda: f"#{alarm_id}" in recent.text, "the alarm cleared")
    assert shed_alarm() is None


def test_a_viewer_sees_everything_and_changes_nothing(browser, demo: Demo):
    sign_in(browser, demo, "viewer")
    assert by_id(browser, "readonly").is_displayed()
    until(browser, lambda: by_id(browser, "kpi-grid").get_attribute("data-seq"), "live values")
    devices = by_id(browser, "devices")
    until(browser, lambda: len(devices.find_elements(By.TAG_NAME, "tr")) == 5, "the devices")
    with demo.api("viewer") as api:
        before = api.get("/v1/setpoints").json()
    field = by_id(browser, "sp-ramp_up_w_per_s")
    in_kw = f"{before['ramp_up_w_per_s'] / 1e3:g}"
    until(browser, lambda: field.get_attribute("value") == in_kw, "the setpoints")
    for control in (
        field,
        by_id(browser, "sp-apply"),
        by_id(browser, "ev-submit"),
        *browser.find_elements(By.CSS_SELECTOR, ".mode-btn"),
    ):
        assert not control.is_enabled(), control.get_attribute("id")
        assert "operator role" in control.get_attribute("title"), control.get_attribute("title")
    # Even forced, the page sends nothing: the button stays disabled, the values stay.
    browser.execute_script(
        "const f = document.getElementById('sp-ramp_up_w_per_s'); f.disabled = false;"
        "f.value = '100'; f.dispatchEvent(new Event('input', {bubbles: true}));"
    )
    assert not by_id(browser, "sp-apply").is_enabled()
    browser.execute_script("document.getElementById('setpoints-form').requestSubmit()")
    time.sleep(0.5)
    with demo.api("viewer") as api:
        assert api.get("/v1/setpoints").json() == before
    # The audit log shows what changed, not who (for a viewer).
    audit = by_id(browser, "audit")
    until(browser, lambda: "(a key)" in audit.text, "the audit log, keys hidden")
    assert demo.names["operator"] not in audit.text


def test_the_chart_opens_with_the_recorders_last_minutes(browser, demo: Demo):
    """A page opened now shows the ticks before it (from the recorder), not only new ones."""
    with demo.api("viewer") as api:
        past = api.get("/v1/history", params={"seconds": 600}).json()
        assert api.get("/v1/history", params={"seconds": 0}).status_code == 422
    assert len(past["time_s"]) > 20 and set(past) >= {"it_w", "grid_w", "battery_w"}
    assert all(b > a for a, b in itertools.pairwise(past["time_s"]))
    browser.get(demo.base + "/")  # a fresh page, a new chart
    opened_s = time.time()
    sign_in(browser, demo, "viewer")
    chart = by_id(browser, "chart")
    until(browser, lambda: chart.get_attribute("data-from"), "a chart")
    assert float(chart.get_attribute("data-from")) <= min(past["time_s"][0], opened_s - 2.0)


def test_screenshot_of_the_overview(browser, demo: Demo, capsys, tmp_path_factory):
    """The overview as an operator sees it, saved for a look (the path is printed)."""
    sign_in(browser, demo, "operator")
    chart = by_id(browser, "chart")
    until(browser, lambda: int(chart.get_attribute("data-points") or 0) > 100, "a chart to see")
    time.sleep(0.6)  # a redraw with the latest ticks
    out = Path(os.environ.get("GRIDPILOT_SCREENSHOTS") or tmp_path_factory.getbasetemp() / "shots")
    out.mkdir(parents=True, exist_ok=True)
    overview = out / "console-overview.png"
    assert browser.save_screenshot(str(overview))
    page = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = browser.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": page["width"], "height": page["height"], "scale": 1},
        },
    )
    whole = out / "console-page.png"
    whole.write_bytes(base64.b64decode(shot["data"]))
    assert overview.stat().st_size > 20_000 and whole.stat().st_size > overview.stat().st_size
    with capsys.disabled():  # shown whatever pytest captures
        for path in (overview, whole):
            print(f"\nconsole screenshot: {path}")


def test_the_page_logged_no_error(browser):
    """Nothing the page did was refused by its own CSP or failed in a script; the only
    errors are the answers the tests asked for (the wrong key, the refused values)."""
    expected = re.compile(r"status of (401|422)")
    errors = [
        e["message"]
        for e in browser.get_log("browser")
        if e["level"] == "SEVERE" and not expected.search(e["message"])
    ]
    assert not errors, errors
