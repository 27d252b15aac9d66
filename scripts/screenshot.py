"""Screenshot a page of the running Dagster UI with headless Chromium (Debian's `chromium`).

    uv run python scripts/screenshot.py [URL] [OUT.png] [TEXT-TO-CLICK]

Drives Chromium over the DevTools protocol: dismisses the UI's first-visit
dialog, waits for the page to settle, and saves a PNG.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from websockets.sync.client import connect

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # SCREENSHOT_WINDOW=2400,1400 for a graph that needs more room
    f"--window-size={os.environ.get('SCREENSHOT_WINDOW', '1600,1000')}",
]
DISMISS = "[...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Skip')?.click()"


def screenshot(url: str, out: str, click: str | None = None, settle_seconds: float | None = None) -> None:
    # SCREENSHOT_SETTLE=40 on a loaded machine, where the UI's status queries take longer
    settle_seconds = settle_seconds or float(os.environ.get("SCREENSHOT_SETTLE", "12"))
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        sys.exit("chromium is not installed: apt-get install -y chromium")
    port = 9333
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.Popen(
            [
                chromium,
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--remote-debugging-port={port}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ws_url = None
            for _ in range(100):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as resp:
                        pages = [t for t in json.load(resp) if t["type"] == "page"]
                    if pages:
                        ws_url = pages[0]["webSocketDebuggerUrl"]
                        break
                except OSError:
                    pass
                time.sleep(0.2)
            if ws_url is None:
                sys.exit("chromium's DevTools endpoint did not come up")
            ids = itertools.count(1)
            with connect(ws_url, max_size=None) as ws:

                def call(method: str, **params: object) -> dict:
                    msg_id = next(ids)
                    ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
                    while True:
                        reply = json.loads(ws.recv())
                        if reply.get("id") == msg_id:
                            return reply.get("result", {})

                call("Page.enable")
                call("Page.navigate", url=url)
                deadline = time.monotonic() + settle_seconds
                while time.monotonic() < deadline:
                    call("Runtime.evaluate", expression=DISMISS)
                    time.sleep(1)
                if click:  # e.g. open a metadata entry before the shot
                    target = json.dumps(click)
                    call(
                        "Runtime.evaluate",
                        expression=f"[...document.querySelectorAll('*')]"
                        f".find(e => e.children.length === 0 && e.textContent.trim() === {target})?.click()",
                    )
                    time.sleep(3)
                data = call("Page.captureScreenshot", format="png")["data"]
            with open(out, "wb") as fh:
                fh.write(base64.b64decode(data))
            print(f"saved {out}")
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    screenshot(
        sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:3000/asset-groups",
        sys.argv[2] if len(sys.argv) > 2 else "docs/asset-graph.png",
        sys.argv[3] if len(sys.argv) > 3 else None,
    )
