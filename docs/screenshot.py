"""Screenshot of a page of a running Airflow UI, signed in, with Debian's headless Chromium.

How the README's pictures of Airflow are taken (not part of the product, nor of its tests):

    apt-get install chromium chromium-driver
    source .streamflow/env
    .venv/bin/python docs/screenshot.py /required_actions docs/required_actions.png

It asks the api-server for a token with the demo's login (`.streamflow/airflow/admin_password`,
or AIRFLOW_USER / AIRFLOW_PASSWORD), hands it to the browser as the `_token` cookie the UI reads
after a sign-in, opens the page and saves what the browser draws. Chromium is driven through
chromedriver's W3C WebDriver endpoints with plain HTTP calls.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1500,1400",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def airflow_token(base: str) -> str:
    state = Path(os.environ.get("STREAMFLOW_HOME", ".streamflow"))
    password = os.environ.get("AIRFLOW_PASSWORD") or (state / "airflow" / "admin_password").read_text().strip()
    user = os.environ.get("AIRFLOW_USER", "admin")
    answer = httpx.post(f"{base}/auth/token", json={"username": user, "password": password}, timeout=30)
    answer.raise_for_status()
    return answer.json()["access_token"]


def screenshot(base: str, page: str, out: Path, settle_s: float = 6.0) -> None:
    port = free_port()
    driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    webdriver = f"http://127.0.0.1:{port}"
    try:
        for _ in range(50):
            try:
                httpx.get(f"{webdriver}/status", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"args": CHROMIUM_ARGS}}}}
        session = httpx.post(f"{webdriver}/session", json=caps, timeout=60).json()["value"]["sessionId"]
        at = f"{webdriver}/session/{session}"
        httpx.post(f"{at}/url", json={"url": f"{base}/api/v2/version"}, timeout=60)  # the cookie's domain first
        cookie = {"name": "_token", "value": airflow_token(base), "path": "/"}
        httpx.post(f"{at}/cookie", json={"cookie": cookie}, timeout=30)
        httpx.post(f"{at}/url", json={"url": f"{base}{page}"}, timeout=60)
        time.sleep(settle_s)  # the UI renders after its API calls return
        png = httpx.get(f"{at}/screenshot", timeout=60).json()["value"]
        out.write_bytes(base64.b64decode(png))
        httpx.delete(at, timeout=30)
    finally:
        driver.terminate()
        driver.wait(10)


if __name__ == "__main__":
    page, target = sys.argv[1], Path(sys.argv[2])
    screenshot(os.environ.get("AIRFLOW_URL", "http://127.0.0.1:8080"), page, target)
    print(f"wrote {target}")
