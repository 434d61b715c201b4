"""Test support (also used by benchmarks/report_scale.py): drive headless Chromium over the DevTools protocol: load a report page, list problems, screenshot.

Chromium is started with ``--remote-debugging-pipe``: DevTools messages are
NUL-terminated JSON on file descriptors 3 (commands) and 4 (replies and events), so
nothing but the standard library is needed and no port is opened. :func:`load_page`
opens a local HTML file in a fresh profile, waits for the load event and returns the
console errors, uncaught exceptions, failed loads, every request that is not a local
``file:``/``data:`` one, the load time and optionally a PNG screenshot.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cleanface.errors import CleanfaceError

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--mute-audio", "--hide-scrollbars", "--allow-file-access-from-files",
)
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")


class BrowserError(CleanfaceError):
    """Chromium is missing, failed to start or did not answer in time."""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable (``$CLEANFACE_CHROMIUM`` first), or None."""
    env = os.environ.get("CLEANFACE_CHROMIUM")
    if env and Path(env).is_file():
        return env
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageLoad:
    """What happened while a page loaded.

    Attributes
    ----------
    url : str
    load_ms : float
        Wall time from the navigation command to the load event.
    dom_ms : float or None
        ``loadEventEnd - startTime`` of the page's navigation timing.
    console_errors : list of str
        Console messages of level error, uncaught exceptions and log entries of level error.
    requests : list of str
        URLs of every request the page made.
    failed : list of str
        Requests that failed (``url: error``).
    screenshot : bytes or None
        PNG bytes when asked for.
    """

    url: str
    load_ms: float = 0.0
    dom_ms: float | None = None
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    screenshot: bytes | None = None

    @property
    def network_requests(self) -> list[str]:
        """Requests that are not to local ``file:``/``data:`` URLs."""
        return [u for u in self.requests if not u.startswith(LOCAL_SCHEMES)]


class _Pipe:
    """A DevTools session over the pipe pair of one Chromium process."""

    def __init__(self, proc: subprocess.Popen, write_fd: int, read_fd: int) -> None:
        self.proc, self.write_fd, self.read_fd = proc, write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, *, session: str | None = None) -> int:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            written = os.write(self.write_fd, data)
            data = data[written:]
        return self.next_id

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("Chromium did not answer in time")
            ready, _, _ = select.select([self.read_fd], [], [], min(left, 0.5))
            if not ready:
                if self.proc.poll() is not None:
                    raise BrowserError(f"Chromium exited with status {self.proc.returncode}")
                continue
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise BrowserError("Chromium closed the DevTools pipe")
            self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict | None = None, *, session: str | None = None, timeout: float = 30.0) -> dict[str, Any]:
        """Send a command and wait for its reply; events that arrive meanwhile are kept."""
        ident = self.send(method, params, session=session)
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if message.get("id") == ident:
                if "error" in message:
                    raise BrowserError(f"DevTools {method} failed: {message['error'].get('message')}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def wait_event(self, method: str, *, timeout: float) -> dict[str, Any]:
        """Wait for an event named ``method`` (kept events are searched first)."""
        for event in self.events:
            if event.get("method") == method:
                return event
        deadline = time.monotonic() + timeout
        while True:
            message = self._read_message(deadline)
            if "method" in message:
                self.events.append(message)
                if message["method"] == method:
                    return message


def _high_fd(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered 10 or above (so that 3 and 4 can be set safely)."""
    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def _child_fds(read_end: int, write_end: int) -> None:  # runs in the child before exec
    os.dup2(read_end, 3)  # dup2 targets are inheritable: they survive the exec
    os.dup2(write_end, 4)


def load_page(
    html_path: str | os.PathLike,
    *,
    width: int = 1280,
    height: int = 900,
    screenshot: bool = False,
    full_page: bool = False,
    timeout: float = 60.0,
    settle_ms: int = 100,
) -> PageLoad:
    """Open ``html_path`` in headless Chromium and report what happened (see :class:`PageLoad`).

    Parameters
    ----------
    html_path : path-like
        A local HTML file.
    width, height : int
        Viewport size in CSS pixels.
    screenshot : bool
        Capture a PNG of the viewport (or of the whole page with ``full_page``).
    settle_ms : int
        Time left after the load event for late console messages and requests.
    """
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise BrowserError(f"{html_path} does not exist")
    exe = find_chromium()
    if exe is None:
        raise BrowserError("Chromium is not installed (apt-get install chromium, or set CLEANFACE_CHROMIUM)")
    url = html_path.as_uri()
    with _chromium(exe, width, height) as pipe:
        return _drive(pipe, url, width, height, screenshot, full_page, timeout, settle_ms)


@contextlib.contextmanager
def _chromium(exe: str, width: int, height: int) -> Iterator[_Pipe]:
    """A headless Chromium in a fresh profile, its DevTools pipe open; closed (killed if need be) on exit."""
    with tempfile.TemporaryDirectory(prefix="cleanface-chromium-") as profile:
        cmd_read, cmd_write = map(_high_fd, os.pipe())  # we write commands, Chromium reads fd 3
        res_read, res_write = map(_high_fd, os.pipe())  # Chromium writes fd 4, we read
        args = [exe, *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            close_fds=False, preexec_fn=lambda: _child_fds(cmd_read, res_write),
        )
        os.close(cmd_read)
        os.close(res_write)
        pipe = _Pipe(proc, cmd_write, res_read)
        try:
            yield pipe
        finally:
            try:
                pipe.send("Browser.close")
            except OSError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            os.close(cmd_write)
            os.close(res_read)


def _drive(pipe: _Pipe, url: str, width: int, height: int, screenshot: bool, full_page: bool, timeout: float, settle_ms: int) -> PageLoad:
    target = pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
    session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True}, timeout=timeout)["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.call(f"{domain}.enable", session=session, timeout=timeout)
    pipe.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
              session=session, timeout=timeout)
    pipe.events.clear()
    started = time.perf_counter()
    pipe.call("Page.navigate", {"url": url}, session=session, timeout=timeout)
    pipe.wait_event("Page.loadEventFired", timeout=timeout)
    result = PageLoad(url=url, load_ms=(time.perf_counter() - started) * 1000)
    timing = pipe.call("Runtime.evaluate", {
        "expression": "(function(){var n=performance.getEntriesByType('navigation')[0];return n?n.loadEventEnd-n.startTime:null})()",
        "returnByValue": True}, session=session, timeout=timeout)
    value = timing.get("result", {}).get("value")
    result.dom_ms = float(value) if isinstance(value, (int, float)) else None
    if settle_ms:
        pipe.call("Runtime.evaluate", {"expression": f"new Promise(r => setTimeout(r, {int(settle_ms)}))", "awaitPromise": True},
                  session=session, timeout=timeout)
    if screenshot:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        result.screenshot = base64.b64decode(pipe.call("Page.captureScreenshot", params, session=session, timeout=timeout)["data"])
    for event in pipe.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            result.console_errors.append(f"console.{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            result.console_errors.append(f"exception: {details.get('exception', {}).get('description') or details.get('text')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            result.console_errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            result.requests.append(params.get("request", {}).get("url", ""))
        elif method == "Network.loadingFailed":
            result.failed.append(f"{params.get('requestId')}: {params.get('errorText')}")
    return result


def screenshot(html_path: str | os.PathLike, png_path: str | os.PathLike, width: int = 1280, height: int = 900) -> Path:
    """Render ``html_path`` in headless Chromium and write a ``width`` x ``height`` PNG to ``png_path``.

    Returns
    -------
    Path
        ``png_path``.
    """
    from cleanface._atomic import atomic_write_bytes

    loaded = load_page(html_path, width=width, height=height, screenshot=True)
    assert loaded.screenshot is not None
    atomic_write_bytes(png_path, loaded.screenshot)
    return Path(png_path)


# -- an interactive page: real clicks and key presses ----------------------------------------------
_KEYS = {  # key -> (code, Windows virtual key code) for the keys that are not printable characters
    "ArrowRight": ("ArrowRight", 39), "ArrowLeft": ("ArrowLeft", 37), "ArrowUp": ("ArrowUp", 38), "ArrowDown": ("ArrowDown", 40),
    "Enter": ("Enter", 13), "Escape": ("Escape", 27), "Backspace": ("Backspace", 8), "Tab": ("Tab", 9),
}


class Session:
    """One headless Chromium page driven like a person: :meth:`click` and :meth:`press` send real input events.

    Use as a context manager: ``with Session(downloads=folder) as page: page.open(html)``.
    ``downloads``: a folder that files the page downloads are saved to. Console errors and
    uncaught exceptions are collected in :attr:`errors`.
    """

    def __init__(self, *, width: int = 1280, height: int = 900, downloads: str | os.PathLike | None = None, timeout: float = 30.0) -> None:
        self.width, self.height, self.timeout = width, height, timeout
        self.downloads = None if downloads is None else Path(downloads).resolve()
        self._stack = contextlib.ExitStack()
        self.pipe: _Pipe | None = None
        self.session = ""

    def __enter__(self) -> "Session":
        exe = find_chromium()
        if exe is None:
            raise BrowserError("Chromium is not installed (apt-get install chromium, or set CLEANFACE_CHROMIUM)")
        self.pipe = self._stack.enter_context(_chromium(exe, self.width, self.height))
        target = self.pipe.call("Target.createTarget", {"url": "about:blank"}, timeout=self.timeout)["targetId"]
        self.session = self.pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True}, timeout=self.timeout)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self._call(f"{domain}.enable")
        self._call("Emulation.setDeviceMetricsOverride", {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        if self.downloads is not None:
            self.downloads.mkdir(parents=True, exist_ok=True)
            self.pipe.call("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(self.downloads)}, timeout=self.timeout)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def _call(self, method: str, params: dict | None = None) -> dict[str, Any]:
        assert self.pipe is not None, "use Session as a context manager"
        return self.pipe.call(method, params, session=self.session, timeout=self.timeout)

    @property
    def errors(self) -> list[str]:
        """Console errors and uncaught exceptions so far."""
        found = []
        for event in self.pipe.events if self.pipe else []:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                found.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
            elif method == "Runtime.exceptionThrown":
                details = params.get("exceptionDetails", {})
                found.append(str(details.get("exception", {}).get("description") or details.get("text")))
        return found

    def open(self, html_path: str | os.PathLike) -> float:
        """Navigate to a local HTML file and wait for its load event; the milliseconds it took."""
        return self._navigate("Page.navigate", {"url": Path(html_path).resolve().as_uri()})

    def reload(self) -> float:
        """Reload the page (what closing and reopening the tab keeps, localStorage, stays) and wait for its load event."""
        return self._navigate("Page.reload", {})

    def _navigate(self, method: str, params: dict) -> float:
        assert self.pipe is not None
        self.pipe.events = [e for e in self.pipe.events if e.get("method") != "Page.loadEventFired"]
        started = time.perf_counter()
        self._call(method, params)
        self.pipe.wait_event("Page.loadEventFired", timeout=self.timeout)
        return (time.perf_counter() - started) * 1000

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        reply = self._call("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            raise BrowserError(f"{expression[:80]!r} threw: {details.get('exception', {}).get('description') or details.get('text')}")
        return reply.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout: float | None = None) -> Any:
        """Poll a JavaScript expression until it is truthy; its value (a :class:`BrowserError` after ``timeout`` seconds)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression!r}")
            time.sleep(0.05)

    def click(self, selector: str) -> None:
        """Scroll the first element matching ``selector`` into view and click its centre with the mouse."""
        box = self.wait_for(
            f"(function(){{var e=document.querySelector({json.dumps(selector)});if(!e)return null;e.scrollIntoView({{block:'center'}});"
            "var r=e.getBoundingClientRect();return r.width>0&&r.height>0?{x:r.left+r.width/2,y:r.top+r.height/2}:null})()")
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self._call("Input.dispatchMouseEvent", {"type": kind, "x": box["x"], "y": box["y"], "button": "left", "clickCount": 1})

    def press(self, key: str, *, ctrl: bool = False) -> None:
        """Press and release one key: a character (``"d"``) or a named key (``"ArrowRight"``, ``"Enter"``)."""
        code, vk = _KEYS.get(key, (f"Key{key.upper()}" if key.isalpha() else "", ord(key.upper()) if len(key) == 1 else 0))
        params = {"key": key, "code": code, "windowsVirtualKeyCode": vk, "modifiers": 2 if ctrl else 0}
        text = {} if key in _KEYS or ctrl else {"text": key}
        self._call("Input.dispatchKeyEvent", {"type": "keyDown", **params, **text})
        self._call("Input.dispatchKeyEvent", {"type": "keyUp", **params})

    def type(self, text: str) -> None:
        """Type ``text`` into the focused element, one key at a time."""
        for char in text:
            self.press(char)

    def screenshot(self, png_path: str | os.PathLike) -> Path:
        """Write a PNG of the viewport."""
        data = base64.b64decode(self._call("Page.captureScreenshot", {"format": "png"})["data"])
        Path(png_path).write_bytes(data)
        return Path(png_path)
