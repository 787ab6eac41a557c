"""The HTML report in a real headless Chromium, driven over the DevTools protocol (stdlib only: the protocol runs
over a pair of pipes with `--remote-debugging-pipe`).

Checks: the page loads from disk with no console error, no exception, no dialog and no request other than the file
itself; the verdict and the plots are laid out and visible; sorting works; without JavaScript the essentials are
still there; it prints. A full-page screenshot and the PDF are kept under test-artifacts/.
"""

from __future__ import annotations

import base64
import copy
import fcntl
import json
import os
import queue
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

from reports.render import render_html

FIXTURE = Path(__file__).parent / "fixtures" / "report_sample.json"
REAL = Path(__file__).parent / "fixtures" / "report_tvm_batch_fits.json"  # batch fits, TVM tuning details
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
HOSTILE = "<script>alert(1)</script>"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")
TIMEOUT_S = 30.0


class DevTools:
    """A minimal DevTools-protocol client over --remote-debugging-pipe: Chromium reads NUL-terminated JSON
    commands on fd 3 and writes responses and events on fd 4."""

    def __init__(self, binary: str, profile: Path):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds():  # runs in the child: move the pipe ends to the fds Chromium expects
            high_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_in, 3)
            os.dup2(high_out, 4)

        self._log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 - closed in close()
        self.process = subprocess.Popen([binary, *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}"],
                                        stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                        preexec_fn=wire_fds, close_fds=False)
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._responses: dict[int, dict] = {}
        self._inbox: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                self._inbox.put(None)
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._inbox.put(json.loads(message))

    def _pump(self, deadline: float) -> bool:
        try:
            message = self._inbox.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            return False
        if message is None:
            raise RuntimeError("Chromium closed the DevTools pipe")
        if "id" in message:
            self._responses[message["id"]] = message
        else:
            self.events.append(message)
        return True

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        command = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            command["sessionId"] = session
        os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while self._next_id not in self._responses:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {method}")
            self._pump(deadline)
        answer = self._responses.pop(self._next_id)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def wait_for(self, method: str, session: str, after: int = 0) -> dict:
        deadline = time.monotonic() + TIMEOUT_S
        dismissed = 0
        while True:
            for event in self.events[after:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            # an alert() blocks the page until answered: dismiss it (it stays in the events, reported as a problem)
            dialogs = [e for e in self.events[after:] if e.get("method") == "Page.javascriptDialogOpening"]
            for event in dialogs[dismissed:]:
                self.send("Page.handleJavaScriptDialog", {"accept": True}, event.get("sessionId"))
            dismissed = len(dialogs)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} event")
            self._pump(deadline)

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()


class Page:
    """One tab: navigate, evaluate, screenshot, print."""

    def __init__(self, browser: DevTools, width: int = 1280, height: int = 1000, javascript: bool = True):
        self.browser = browser
        target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1,
                                                         "mobile": False})
        if not javascript:
            self.send("Emulation.setScriptExecutionDisabled", {"value": True})

    def send(self, method: str, params: dict | None = None) -> dict:
        return self.browser.send(method, params, self.session)

    def load(self, url: str) -> None:
        mark = len(self.browser.events)
        self.send("Page.navigate", {"url": url})
        self.browser.wait_for("Page.loadEventFired", self.session, after=mark)

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 16000), "scale": 1}
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
        path.write_bytes(base64.b64decode(data["data"]))

    def pdf(self, path: Path) -> bytes:
        data = base64.b64decode(self.send("Page.printToPDF", {"printBackground": True, "preferCSSPageSize": True})
                                ["data"])
        path.write_bytes(data)
        return data

    def problems(self) -> list[str]:
        """Console errors and warnings, uncaught exceptions, dialogs, and requests for anything but the page."""
        found = []
        for event in self.browser.events:
            if event.get("sessionId") != self.session:
                continue
            method, params = event["method"], event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "warning", "assert"):
                found.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                found.append(f"log {params['entry'].get('source')}: {params['entry'].get('text')}")
            elif method == "Page.javascriptDialogOpening":
                found.append(f"dialog opened: {params.get('message')}")
            elif method == "Network.requestWillBeSent":
                url = params["request"]["url"]
                if not url.startswith(("file:", "data:", "about:")):
                    found.append(f"request: {url}")
        return found


@pytest.fixture(scope="module")
def sample() -> dict:
    return json.loads(FIXTURE.read_text())


@pytest.fixture(scope="module")
def browser(tmp_path_factory, chromium):
    """`chromium` (tests/conftest.py) installs it with apt-get when missing, or skips with the reason."""
    folder = tmp_path_factory.mktemp("chromium")
    client = DevTools(chromium, folder / "profile")
    yield client
    client.close()


@pytest.fixture(scope="module")
def pages(tmp_path_factory, sample) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pages")
    variants = {"recommended": sample, "no_slo_met": no_slo_variant(sample), "exported": exported_variant(sample),
                "fitted": fitted_variant(json.loads(REAL.read_text()))}
    paths = {}
    for name, report in variants.items():
        paths[name] = folder / f"{name}.html"
        paths[name].write_text(render_html(report), encoding="utf-8")
    return paths


def no_slo_variant(report: dict) -> dict:
    """The same run judged against an SLO nothing can meet."""
    variant = copy.deepcopy(report)
    slo = 0.5
    variant["slo"]["latency_ms"] = slo
    for row in variant["ranking"]:
        row.update(slo_verdict="misses", meets_slo=False, slo_margin_ms=slo - row["latency_ms"])
    variant["status"], variant["recommendation"] = "no_slo_met", None
    variant["closest_miss"] = min(variant["ranking"], key=lambda r: r["latency_ms"])
    return variant


def exported_variant(report: dict) -> dict:
    """The same run of a model exported from PyTorch (model.export), with a hostile note."""
    variant = copy.deepcopy(report)
    variant["model"]["export"] = {"source": "models/ocr.pt", "source_kind": "torchscript",
                                  "exporter": "torch.onnx.export (dynamo)", "max_abs_error": 2.4e-06,
                                  "max_rel_error": 0.00031, "notes": [f"exported at opset 17 {HOSTILE}"]}
    return variant


def fitted_variant(report: dict) -> dict:
    """The real run with its winner sized at an extrapolated batch (as a row of the same candidate is), so the
    verdict carries the fitted-batch warning; its fit's config gets a hostile value."""
    variant = copy.deepcopy(report)
    row = next(r for r in variant["ranking"] if r.get("batch_basis") == "extrapolated")
    rec = variant["recommendation"]
    assert (rec["backend"], rec["config"]) == (row["backend"], row["config"])
    rec.update(batch_size=row["batch_size"], batch_basis="extrapolated",
               notes=[n for n in row["notes"] if n.startswith("batch ")])
    for entry in (rec, variant["costmodel"]["batch_fits"][0], *variant["ranking"], *variant["trials"]):
        if entry.get("config", {}).get("stock"):  # shown as "stock settings" unless no longer the stock one
            entry["config"] = {**{k: v for k, v in entry["config"].items() if k != "stock"}, "note": HOSTILE}
    return variant


VISIBLE = """(selector) => {
  const el = document.querySelector(selector);
  if (!el) return null;
  const box = el.getBoundingClientRect(), style = getComputedStyle(el);
  return {width: box.width, height: box.height, top: box.top + scrollY, display: style.display,
          visibility: style.visibility, text: el.textContent.slice(0, 200)};
}"""


def visible(page: Page, selector: str) -> dict:
    box = page.evaluate(f"({VISIBLE})({json.dumps(selector)})")
    assert box is not None, f"{selector} is not in the page"
    assert box["width"] > 0 and box["height"] > 0 and box["visibility"] == "visible" and box["display"] != "none", \
        (selector, box)
    return box


def test_the_checks_catch_errors_requests_and_scripts(browser, tmp_path):
    """A control: a page that logs an error, requests a remote-looking resource and runs an injected alert()."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
                   '<script>console.error("boom"); alert(1)</script></body></html>')
    page = Page(browser)
    page.load(bad.as_uri())
    problems = "\n".join(page.problems())
    assert "console.error" in problems and "dialog opened: 1" in problems and "request: http://127.0.0.1:9/x.png" \
        in problems


def test_report_loads_cleanly_and_shows_the_verdict_and_plots(browser, pages, sample):
    page = Page(browser)
    page.load(pages["recommended"].as_uri())
    assert page.problems() == []
    verdict = visible(page, "#recommended-instance")
    assert verdict["text"] == sample["recommendation"]["instance"]
    assert verdict["top"] < 400  # the answer is above the fold
    plot = visible(page, "#price-plot svg")
    assert plot["width"] > 900 and plot["height"] > 400
    circles = page.evaluate("document.querySelectorAll('#price-plot svg circle').length")
    assert circles >= len(sample["ranking"])
    for selector in ("#distribution-plot svg", "#roofline svg", "#tuning svg", "#model svg", "#ranking-table"):
        visible(page, selector)
    # the hostile input name is shown as text and nothing ran: one script element (ours), no injected nodes
    assert page.evaluate("document.querySelectorAll('script').length") == 1
    assert page.evaluate(f"document.body.textContent.includes({json.dumps(HOSTILE)})") is True
    assert page.evaluate("document.querySelectorAll('img, iframe, object, embed, link').length") == 0
    # nothing wider than the window (no horizontal scrolling of the page itself)
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(ARTIFACTS / "report.png")
    assert (ARTIFACTS / "report.png").stat().st_size > 50_000


def test_sorting_the_ranked_table(browser, pages):
    page = Page(browser)
    page.load(pages["recommended"].as_uri())
    column = "document.querySelectorAll('#ranking-table thead th')"
    price_index = page.evaluate(f"[...{column}].findIndex(th => th.textContent.trim() === '$/h')")
    read = (f"[...document.querySelectorAll('#ranking-table tbody tr.main')].map(r => "
            f"parseFloat(r.cells[{price_index}].dataset.value))")
    page.evaluate(f"{column}[{price_index}].click()")
    ascending = page.evaluate(read)
    assert ascending == sorted(ascending)
    page.evaluate(f"{column}[{price_index}].click()")
    assert page.evaluate(read) == sorted(ascending, reverse=True)
    assert page.evaluate(f"{column}[{price_index}].getAttribute('aria-sort')") == "descending"
    assert page.problems() == []


def test_essentials_without_javascript(browser, pages):
    page = Page(browser, javascript=False)
    page.load(pages["recommended"].as_uri())
    assert page.problems() == []
    visible(page, "#recommended-instance")
    visible(page, "#price-plot svg")
    visible(page, "#ranking-table")


def test_no_slo_met_page_and_print(browser, pages, sample):
    page = Page(browser)
    page.load(pages["no_slo_met"].as_uri())
    assert page.problems() == []
    heading = visible(page, "#verdict-title")
    assert heading["text"].startswith("No instance meets the SLO")
    closest = visible(page, "#closest-instance")
    assert closest["text"] == min(sample["ranking"], key=lambda r: r["latency_ms"])["instance"]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(ARTIFACTS / "report-no-slo.png")
    printed = Page(browser, width=700)  # an A4 page's printable width in CSS pixels
    printed.send("Emulation.setEmulatedMedia", {"media": "print"})
    printed.load(pages["recommended"].as_uri())
    assert printed.evaluate("document.documentElement.scrollWidth") <= 700  # nothing cut off at the page edge
    pdf = printed.pdf(ARTIFACTS / "report.pdf")
    assert pdf.startswith(b"%PDF")
    assert 3 <= len(re.findall(rb"/Type\s*/Page[^s]", pdf)) <= 20  # A4 pages: tables wrap rather than overflow


def test_model_export_block(browser, pages):
    """How the model was exported shows in the model section, on screen and in print, and nothing it holds runs."""
    for media in ("screen", "print"):
        page = Page(browser)
        page.send("Emulation.setEmulatedMedia", {"media": media})
        page.load(pages["exported"].as_uri())
        assert page.problems() == []
        block = visible(page, "#model-export")
        assert block["text"].strip().startswith("Exported to ONNX")
        assert block["top"] > visible(page, "#model")["top"]
        text = page.evaluate("document.querySelector('#model-export').textContent")
        assert "torch.onnx.export (dynamo)" in text and "2.4e-06 max abs" in text and HOSTILE in text
        assert page.evaluate("document.querySelectorAll('script').length") == 1


def test_batch_sizing_and_tuning_details(browser, pages):
    """The fitted-batch warning in the verdict, the basis tags with their tooltips, the batch-fit plot and table,
    and TVM's tuning summary: laid out on screen without overflow, and in print."""
    page = Page(browser)
    page.load(pages["fitted"].as_uri())
    assert page.problems() == []
    warning = visible(page, "#fitted-batch")
    assert warning["text"].startswith("Batch 16 was never measured.") and warning["top"] < 900
    tags = page.evaluate("[...document.querySelectorAll('#ranking-table .b-extrapolated')].map(t => t.title)")
    assert tags and all(re.match(r"batch \d+ extrapolated: latency .*\(cap 16: 2x the largest measured\)$", t)
                        for t in tags)
    visible(page, "#ranking-table .b-extrapolated")
    plot = visible(page, "#batch-fit-plot svg")
    assert plot["width"] > 900 and plot["height"] > 300
    assert page.evaluate("document.querySelectorAll('#batch-fit-plot svg circle').length") >= 5
    visible(page, "#batch-fits")
    # the fit table fits its card (no scrolling inside it), and nothing widens the page
    assert page.evaluate("(w => w.scrollWidth <= w.clientWidth)(document.querySelector('#batch-fits').parentElement)")
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    summary = visible(page, "#tuning .tuning-summary")
    assert summary["text"].startswith("12 trials on 1 of 6 tasks in 12 s") and "0 sampled" in summary["text"]
    text = page.evaluate("document.querySelector('#sizing').textContent")
    assert HOSTILE in text and page.evaluate("document.querySelectorAll('script').length") == 1
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(ARTIFACTS / "report-fitted.png")
    printed = Page(browser, width=700)
    printed.send("Emulation.setEmulatedMedia", {"media": "print"})
    printed.load(pages["fitted"].as_uri())
    assert printed.problems() == []
    assert printed.evaluate("document.documentElement.scrollWidth") <= 700
    visible(printed, "#batch-fit-plot svg")
    visible(printed, "#fitted-batch")
