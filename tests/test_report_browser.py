"""The HTML report in a real browser: headless Chromium opens the page made from the committed reference CSVs
(one file; two files for the comparison view), and the test checks that it renders without console errors or
exceptions, requests nothing but the page itself and its ``data:`` URIs (no ``http(s)://`` resource), and
shows every section and plot. The first screen of the comparison view is kept as ``docs/img/report.png`` when
``XFBENCH_SCREENSHOT=1``.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON messages ended
by a NUL byte on file descriptors 3 and 4), with the standard library only: no network, no extra package.
Skipped where no Chromium is installed, except where ``XFBENCH_REQUIRE`` names ``browser`` (``tox -e browser``):
there its absence fails the test.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REQUIRE_ENV, required_frameworks
from xfbench.reports.html import SECTIONS, write_report_html

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "reports" / "reference"
# Two runs of one machine, one under an instruction-set cap (AVX2): every row kind but exercises; with the
# exercise rows of one backend the one-file view has every plot group.
FIRST = REFERENCE / "cpu-amd-epyc-2core-issue20-default-run1.csv"
SECOND = REFERENCE / "cpu-amd-epyc-2core-issue20-avx2-run1.csv"
EXERCISES = REFERENCE / "exercises-torch-cpu.csv"
SCREENSHOT = REPO / "docs" / "img" / "report.png"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIEWPORT = (1280, 900)
TIMEOUT_S = 60.0


def _chromium() -> str:
    """The Chromium binary (``XFBENCH_CHROMIUM`` or the first of ``BROWSERS`` on PATH); skip or fail without."""
    __tracebackhide__ = True
    found = os.environ.get("XFBENCH_CHROMIUM") or next((p for b in BROWSERS if (p := shutil.which(b))), None)
    if found:
        return found
    why = f"no Chromium on PATH ({', '.join(BROWSERS)}; install Debian's chromium: apt-get install -y chromium)"
    if "browser" in required_frameworks():
        pytest.fail(f"{REQUIRE_ENV}={os.environ[REQUIRE_ENV]}: {why}", pytrace=False)
    pytest.skip(why)


class DevTools:
    """A headless Chromium and its DevTools protocol over the debugging pipe, one page attached."""

    def __init__(self, binary: str, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:  # Chromium reads commands on fd 3 and writes replies and events on fd 4
            # dup2 leaves the copies inheritable; every other descriptor of this process is close-on-exec
            # (Python's default), hence close_fds=False below: subprocess would close 3 and 4 after this hook.
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)
            os.set_inheritable(3, True)  # dup2 onto itself (a pipe end already at 3 or 4) keeps close-on-exec
            os.set_inheritable(4, True)

        args = [binary, "--headless", "--remote-debugging-pipe", "--disable-gpu", "--no-first-run"]
        args += ["--no-default-browser-check", "--hide-scrollbars", f"--user-data-dir={profile}", "about:blank"]
        if os.geteuid() == 0:
            args.insert(1, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
        self.proc = subprocess.Popen(
            args,
            preexec_fn=child_fds,
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session = ""

    def close(self) -> None:
        try:
            self.call("Browser.close", browser_level=True, timeout=5)
        except (AssertionError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            assert left > 0, "Chromium did not answer in time"
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                assert chunk, f"Chromium closed the pipe (exit code {self.proc.poll()})"
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return dict(json.loads(message))

    def call(self, method: str, browser_level: bool = False, timeout: float = TIMEOUT_S, **params: Any) -> Any:
        """Send one command and return its result; events that arrive meanwhile go to ``events``."""
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self.session and not browser_level:
            msg["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                assert "error" not in reply, (method, reply["error"])
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, event: str, timeout: float = TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        for seen in self.events:
            if seen["method"] == event:
                return seen
        while True:
            msg = self._read_message(deadline)
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == event:
                    return msg

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", browser_level=True, url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", browser_level=True, targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        width, height = VIEWPORT
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"]["value"]

    def errors(self) -> list[str]:
        """Console errors, uncaught exceptions, error log entries and failed loads since the page was opened."""
        out = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.exceptionThrown":
                out.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(f"console.{p['type']}: {p.get('args')}")
            elif e["method"] == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif e["method"] == "Network.loadingFailed":
                out.append(f"load failed: {p.get('errorText')}")
        return out

    def requested(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events if e["method"] == "Network.requestWillBeSent"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevTools]:
    binary = _chromium()
    tools = DevTools(binary, tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield tools
    finally:
        tools.close()


# What the page shows, read from the rendered DOM: section ids, figure ids, and each figure's rendered size.
_INSPECT = """JSON.stringify({
  sections: [...document.querySelectorAll('main > section')].map(s => s.id),
  figures: [...document.querySelectorAll('figure.plot')].map(f => {
    const svg = f.querySelector('svg'); const r = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
    return [f.id, Math.round(r.width), Math.round(r.height)];
  }),
  tables: document.querySelectorAll('table').length,
  remote: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))
    .filter(u => !(u.startsWith('#') || u.startsWith('data:'))),
  verdictTop: Math.round(document.getElementById('verdict').getBoundingClientRect().top),
  text: document.body.innerText.length,
})"""


def _check_page(browser: DevTools, page: Path, sections: list[str], figures: list[str]) -> dict[str, Any]:
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    browser.open(page.as_uri())
    seen = json.loads(browser.evaluate(_INSPECT))
    assert browser.errors() == []
    assert [u for u in browser.requested() if not u.startswith(("file:", "data:"))] == []
    assert seen["remote"] == []
    assert seen["sections"] == sections
    assert [f[0] for f in seen["figures"]] == figures
    for name, width, height in seen["figures"]:
        assert width > 200 and height > 150, (name, width, height)  # drawn, not an empty box
    assert seen["tables"] >= 4 and seen["text"] > 2000
    assert seen["verdictTop"] < VIEWPORT[1] / 2  # the verdict is on the first screen
    return dict(seen)


def test_one_run_renders_every_section_and_plot(browser: DevTools, tmp_path: Path) -> None:
    page = write_report_html([FIRST], tmp_path / "one.html")
    _check_page(
        browser,
        page,
        [s for s in SECTIONS if s != "comparison"],
        ["plot-time", "plot-memory", "plot-throughput", "plot-matmul", "plot-scaling"],
    )


def test_exercise_rows_get_their_plot(browser: DevTools, tmp_path: Path) -> None:
    page = write_report_html([EXERCISES], tmp_path / "exercises.html")
    browser.open(page.as_uri())
    seen = json.loads(browser.evaluate(_INSPECT))
    assert browser.errors() == []
    assert [f[0] for f in seen["figures"]] == ["plot-exercises"]


def test_two_runs_give_the_comparison_and_the_screenshot(browser: DevTools, tmp_path: Path) -> None:
    page = write_report_html([FIRST, SECOND], tmp_path / "two.html")
    _check_page(
        browser,
        page,
        list(SECTIONS),
        ["plot-time", "plot-memory", "plot-throughput", "plot-matmul", "plot-scaling"],
    )
    shot = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
    assert shot.startswith(b"\x89PNG\r\n\x1a\n") and len(shot) > 20_000
    # kept in docs/ only when asked (XFBENCH_SCREENSHOT=1): the page shows when it was made, so every run differs
    target = SCREENSHOT if os.environ.get("XFBENCH_SCREENSHOT") == "1" else tmp_path / "report.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(shot)
