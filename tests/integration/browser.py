"""A real headless Chromium driven over the Chrome DevTools Protocol (CDP): load a page, collect
what its console and runtime report, evaluate expressions, take a screenshot."""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

import websocket

DEADLINE = 60.0
WIDTH, HEIGHT = 1280, 2000
FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-port=0",
    f"--window-size={WIDTH},{HEIGHT}",
]


class Browser:
    """``with Browser(chromium) as page: page.open(path)``; ``problems`` lists every console
    error or warning, uncaught exception and browser log error (CSP violations among them)."""

    def __init__(self, chromium: Path) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="chromium-")
        self._proc = subprocess.Popen(
            [str(chromium), *FLAGS, f"--user-data-dir={self._dir.name}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._next = 0
        self.events: list[dict[str, Any]] = []
        self._ws = websocket.create_connection(self._page_socket(), timeout=DEADLINE, suppress_origin=True)
        for domain in ("Runtime", "Log", "Page"):
            self.call(f"{domain}.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=WIDTH,
            height=HEIGHT,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _page_socket(self) -> str:
        port_file = Path(self._dir.name) / "DevToolsActivePort"
        end = time.monotonic() + DEADLINE
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._proc.returncode} before listening")
            try:
                port = int(port_file.read_text().split()[0])
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as answer:
                    targets = json.load(answer)
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return str(pages[0]["webSocketDebuggerUrl"])
            except (OSError, ValueError, IndexError):
                pass
            if time.monotonic() > end:
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one CDP command and return its result; events read meanwhile are kept."""
        self._next += 1
        ident = self._next
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_event(self, method: str) -> dict[str, Any]:
        seen = len(self.events)
        end = time.monotonic() + DEADLINE
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method:
                    return event
            seen = len(self.events)
            if time.monotonic() > end:
                raise AssertionError(f"no {method} within {DEADLINE} s")
            self.call("Runtime.evaluate", expression="0")  # reads the events that came meanwhile

    def open(self, path: Path) -> None:
        """Navigate to the file and wait for its load event."""
        self.events.clear()
        self.call("Page.navigate", url=path.resolve().as_uri())
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])

    @property
    def problems(self) -> list[str]:
        found: list[str] = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(f"exception: {params['exceptionDetails']}")
            elif method == "Runtime.consoleAPICalled" and params.get("type") in (
                "error",
                "warning",
                "assert",
            ):
                found.append(f"console.{params['type']}: {params.get('args')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") in ("error", "warning"):
                found.append(f"log {params['entry']['level']}: {params['entry'].get('text')}")
        return found

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._ws.close()
        self._proc.terminate()
        try:
            self._proc.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._dir.cleanup()
