"""Helpers for tests that start real servers on loopback and open them in headless Chromium.

Every server a test starts is a child process it stops itself (:func:`serving`).
"""
from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import Iterator, Optional

import pytest

#: Skip a browser test where Chromium is missing (``make test`` installs it as root with apt-get).
needs_browser = pytest.mark.skipif(not (shutil.which("chromedriver") and shutil.which("chromium")),
                                   reason="no chromium/chromedriver (make test installs them as root: apt-get)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(url: str, data: Optional[bytes] = None, headers: Optional[dict] = None,
         timeout: float = 60) -> tuple[int, bytes]:
    """(status, body) of a GET (or a POST with ``data``); HTTP errors are answers, not exceptions."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@contextlib.contextmanager
def serving(argv: list[str], health_url: str, *, timeout: float = 120, **popen) -> Iterator[subprocess.Popen]:
    """Start ``argv``, wait until ``health_url`` answers 200, yield the process; terminate it after
    (killed if it does not stop). Fails with the server's output when it exits early."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if http(health_url, timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None, f"{argv[:3]} exited: {proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, f"{health_url} did not answer within {timeout:.0f} s"
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def chromium(width: int = 1400, height: int = 900):
    """A headless Chromium WebDriver (Debian's chromium and chromium-driver), quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service as ChromeService

    options = Options()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=ChromeService(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()
