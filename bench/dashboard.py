#!/usr/bin/env python3
"""How fast the dashboard's first screen of a big collection is.

    bench/dashboard.sh   (builds, makes the collection, runs this)
    python3 bench/dashboard.py --page http://127.0.0.1:PORT/ --collection ID \
        [--streams 100] [--runs 5]

Opens the collection page in headless Chromium (chromedriver, spoken to
over plain WebDriver HTTP: no client library) and prints, per run, the
milliseconds from navigation start until the first screen of the grid is
drawn (every cell of the page in the DOM), and the API's own latency for
the header and one screen of the grid. With --streams N, N more browsers'
event streams (/events) are held open during the runs.
"""
import argparse
import json
import socket
import statistics
import subprocess
import threading
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read() or b"null")


def timed_get(url):
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as r:
        n = len(r.read())
    return (time.perf_counter() - t) * 1000, n


def hold_stream(url, stop):
    try:
        with urllib.request.urlopen(url, timeout=600) as r:
            while not stop.is_set():
                if not r.readline():
                    return
    except Exception:
        pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--page", required=True)
    ap.add_argument("--collection", required=True)
    ap.add_argument("--streams", type=int, default=0)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    page = a.page if a.page.endswith("/") else a.page + "/"

    head = json.load(urllib.request.urlopen(f"{page}api/collections/{a.collection}"))
    cols = max(1, len(head["columns"]))
    rows = max(1, min(200, 600 // cols))
    expect = min(head["contents"], rows) * cols
    stop = threading.Event()
    holders = [threading.Thread(target=hold_stream, args=(f"{page}api/collections/{a.collection}/events", stop), daemon=True) for _ in range(a.streams)]
    for t in holders:
        t.start()
    time.sleep(1 if holders else 0)

    port = free_port()
    driver = subprocess.Popen(["chromedriver", f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wd = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                call(wd, "GET", "/status")
                break
            except Exception:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": {"args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"]}}}}
        session = call(wd, "POST", "/session", caps)["value"]["sessionId"]
        s = f"/session/{session}"
        screens, header_ms, grid_ms = [], [], []
        for _ in range(a.runs):
            call(wd, "POST", f"{s}/url", {"url": "about:blank"})
            call(wd, "POST", f"{s}/url", {"url": f"{page}#/c/{a.collection}"})
            script = "return [document.querySelectorAll('td.cell').length, performance.now()];"
            deadline = time.time() + 30
            while True:
                n, now = call(wd, "POST", f"{s}/execute/sync", {"script": script, "args": []})["value"]
                if n >= expect:
                    screens.append(now)
                    break
                if time.time() > deadline:
                    raise SystemExit(f"the grid showed {n} of {expect} cells after 30 s")
                time.sleep(0.01)
            header_ms.append(timed_get(f"{page}api/collections/{a.collection}")[0])
            ms, size = timed_get(f"{page}api/collections/{a.collection}/grid?from_row=0&rows={rows}")
            grid_ms.append(ms)
        call(wd, "DELETE", s)
    finally:
        driver.kill()
        stop.set()
    print(json.dumps({
        "jobs": head["contents"] * cols, "cells_on_first_screen": expect, "open_streams": a.streams, "runs": a.runs,
        "first_screen_ms_median": round(statistics.median(screens)), "first_screen_ms_max": round(max(screens)),
        "api_header_ms_median": round(statistics.median(header_ms), 1), "api_grid_ms_median": round(statistics.median(grid_ms), 1),
        "grid_bytes": size,
    }))


if __name__ == "__main__":
    main()
