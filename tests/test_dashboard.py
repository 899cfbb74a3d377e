"""The live dashboard (corral.dashboard): its JSON, ``corral dashboard``, its security, and the page
itself in a real headless Chromium driven by Selenium, asserting what it shows while a map runs.

The browser test is skipped, saying why, without Debian's chromium and chromium-driver or the
selenium package.  ``CORRAL_SCREENSHOT=PATH`` makes it save the page, mid-run, to PATH
(docs/dashboard.png is made this way).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from helpers import corral_cmd, read_line, start_worker, stop, takes_ctrl_c, wait_for

pytest.importorskip("tornado", reason="the dashboard needs tornado: pip install 'corral[dashboard]'")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def get(url: str, password: str | None = None, host: str | None = None) -> tuple[int, bytes, Any]:
    """An HTTP GET: status, body and headers (an error status is returned, not raised)."""
    request = urllib.request.Request(url)
    if password is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"corral:{password}".encode()).decode())
    if host is not None:
        request.add_header("Host", host)
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read(), reply.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def status_of(url: str, password: str | None = None) -> dict:
    code, body, _ = get(url + "api/status", password)
    assert code == 200, (code, body)
    return json.loads(body)


# Compiled under a plain file name, so that the tracebacks the page (and docs/dashboard.png) shows
# name no path of the machine the tests ran on.
_analysis: dict = {"time": time, "__name__": __name__}
exec(compile('''
def slow_square(x, seconds=0.4):
    time.sleep(seconds)
    if x < 0:
        raise ValueError(f"negative input {x}")
    return x * x
''', "analysis.py", "exec"), _analysis)
slow_square = _analysis["slow_square"]


def test_json_endpoint_and_page_of_an_executor(make_executor):
    ex = make_executor(2, dashboard="127.0.0.1:0")
    url = ex.dashboard_url
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")
    assert list(ex.map(slow_square, range(6), [0.01] * 6)) == [x * x for x in range(6)]
    wait_for(lambda: (status_of(url)["status"].get("counts") or {}).get("done", 0) >= 6, what="6 tasks done")
    state = status_of(url)
    status = state["status"]
    assert state["error"] is None and len(state["history"]) >= 1
    assert len([w for w in status["workers"] if w["state"] != "gone"]) == 2
    assert {"worker", "host", "pid", "tasks"} <= set(status["workers"][0])
    [m] = status["maps"]
    assert (m["name"], m["total"], m["done"], m["failed"]) == ("slow_square", 6, 6, 0)
    assert len(status["events"]) == 6 and {e["state"] for e in status["events"]} == {"done"}
    assert all(e["worker"] for e in status["events"])
    # The page and its files, with headers that keep it to itself.
    code, body, headers = get(url)
    assert code == 200 and b"dashboard.js" in body
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    for name in ("dashboard.js", "dashboard.css"):
        assert get(url + "static/" + name)[0] == 200
    # On loopback without a password, only pages of localhost may read it (no DNS rebinding).
    assert get(url + "api/status", host="attacker.example:80")[0] == 403
    ex.shutdown()
    assert not [t for t in threading.enumerate() if t.name.startswith("corral-dashboard")]
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def test_failures_and_their_tracebacks_reach_the_status(make_executor):
    default_free = True
    with socket.socket() as s:  # dashboard=True: 127.0.0.1:8787, if nothing else on this machine has it
        try:
            s.bind(("127.0.0.1", 8787))
        except OSError:
            default_free = False
    ex = make_executor(1, dashboard=True if default_free else "127.0.0.1:0")
    if default_free:
        assert ex.dashboard_url == "http://127.0.0.1:8787/"
    with pytest.raises(ValueError, match="negative input -1"):
        list(ex.map(slow_square, [1, -1], [0.01, 0.01]))
    url = ex.dashboard_url

    def failed():
        events = status_of(url)["status"].get("events") or []
        return [e for e in events if e["state"] == "failed"]

    [event] = wait_for(failed, what="the failure in the events")
    assert "ValueError: negative input -1" in event["error"] and "slow_square" in event["error"]
    assert "mapping.py" not in event["error"]  # the task's traceback, not the caller's re-raise


def test_executor_refuses_a_dashboard_beyond_loopback_without_a_client_key():
    import corral

    with pytest.raises(ValueError, match="beyond loopback"):
        corral.Executor(1, dashboard="0.0.0.0:0")
    with pytest.raises(ValueError, match="HOST:PORT"):
        corral.Executor(1, dashboard="8787")


def test_missing_tornado_names_the_extra():
    code = ("import sys; sys.modules['tornado'] = None\n"
            "import corral\n"
            "try:\n"
            "    corral.Executor(1, dashboard=True)\n"
            "except ImportError as exc:\n"
            "    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "DashboardUnavailableError" in out.stdout and "pip install 'corral[dashboard]'" in out.stdout, out


def start_dashboard(*args: str) -> tuple[subprocess.Popen, str, str | None]:
    """``corral dashboard ARGS`` on a free loopback port: the process, its URL, its password (or None)."""
    proc = subprocess.Popen(corral_cmd("dashboard", *args, "--listen", "127.0.0.1:0"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=takes_ctrl_c)
    line = read_line(proc.stdout)
    assert line.startswith("corral dashboard: http://127.0.0.1:"), line
    url = line.split(": ", 1)[1].strip()
    password = None
    if "--auth" in args:
        line = read_line(proc.stdout)
        assert "user corral, password " in line, line
        password = line.rsplit(" ", 1)[1].strip()
    return proc, url, password


def test_cli_against_a_standalone_broker_with_the_password_forced_on(broker_address):
    worker = start_worker(broker_address, "--processes", "2")
    proc = None
    try:
        proc, url, password = start_dashboard(broker_address, "--auth")
        token = subprocess.run(corral_cmd("dashboard", broker_address, "--print-token"), capture_output=True,
                               text=True, timeout=60).stdout.strip()
        assert password == token and len(token) == 32
        assert get(url + "api/status")[0] == 401
        code, _, headers = get(url, password="wrong")
        assert code == 401 and headers["WWW-Authenticate"].startswith("Basic ")
        assert get(url + "static/dashboard.js")[0] == 401
        assert get(url, password=password)[0] == 200

        def two_workers():
            workers = status_of(url, password)["status"].get("workers") or []
            return len([w for w in workers if w["state"] != "gone"]) == 2

        wait_for(two_workers, what="the two workers on the page's status")
        proc.send_signal(signal.SIGINT)  # Ctrl-C: exits 0, quietly
        assert proc.wait(30) == 0
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc is not None:
            stop(proc)
            proc.stdout.close()
            proc.stderr.close()
        stop(worker)


@pytest.mark.parametrize("args, message", [
    (["--listen", "0.0.0.0:8787"], "reaches beyond this machine"),
    (["--listen", "[::]:8787"], "reaches beyond this machine"),
    (["--listen", "localhost"], "HOST:PORT"),
    (["--listen", "127.0.0.1:8787", "--auth"], "password made from a client key"),
])
def test_cli_refuses_to_serve_beyond_loopback_without_credentials(tmp_path, args, message):
    out = subprocess.run(corral_cmd("dashboard", f"ipc://{tmp_path}/broker", *args), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2, out
    assert "usage: corral dashboard" in out.stderr and message in out.stderr and "Traceback" not in out.stderr


# -- the page, in a real browser ---------------------------------------------------------------------


def browser_or_skip():
    """A headless Chromium driven by Selenium, on a fresh profile; skip, saying why, without one."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test needs selenium (pip)")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"the browser test needs Debian's {package}: apt-get install -y chromium chromium-driver")
    profile = tempfile.mkdtemp(prefix="dashboard-browser-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1280,1180", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    try:
        driver = webdriver.Chrome(options=options, service=service)
    except Exception:
        shutil.rmtree(profile, ignore_errors=True)
        raise
    return driver, profile


def test_the_page_shows_a_running_map_in_chromium(make_executor):
    driver, profile = browser_or_skip()
    from selenium.webdriver.common.by import By

    def texts(selector: str) -> list[str]:  # read in one script: the page redraws every second
        return driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText)", selector)

    def text(selector: str) -> str:
        found = texts(selector)
        return found[0] if found else ""

    def number(selector: str) -> int:
        value = text(selector)
        return int(value) if value.isdigit() else -1

    def map_progress(number: int) -> str:
        return text(f'#maps .map[data-map="{number}"] .progress')

    outcome: dict = {}
    threads = []
    try:
        ex = make_executor(3, dashboard="127.0.0.1:0")
        n = 60  # 0.4 s each on 3 workers: about 8 s

        def consume(name, runner, *args):
            try:
                outcome[name] = list(runner.map(slow_square, *args))
            except Exception as exc:  # the failing map's ValueError; anything else fails the test below
                outcome[name] = exc

        # The failing task goes first (a higher priority), while the long map runs.
        for name, runner, args in (("long", ex, (range(n),)), ("failing", ex.options(priority=1), ([-1], [0.05]))):
            threads.append(threading.Thread(target=consume, args=(name, runner, *args)))
            threads[-1].start()
            wait_for(lambda: len(ex._dashboard.maps.maps()) == len(threads), what="the map's start")  # long: #1
        driver.get(ex.dashboard_url)
        # Processes still starting are listed too (no name yet): wait for the three that joined.
        wait_for(lambda: len([r for r in texts("#workers tbody tr") if "starting" not in r]) == 3,
                 what="3 worker rows")
        assert text("#connection") == "live"
        assert {row.split()[0] for row in texts("#workers tbody tr")} == {
            w["worker"] for w in ex.summary()}
        wait_for(lambda: number("#count-done .value") >= 3, what="done tasks on the page")
        first = number("#count-done .value")
        assert first < n, "the map was over before the page showed it running"
        assert text('#maps .map[data-map="1"] .name') == "#1 slow_square"
        assert f"/ {n} (" in map_progress(1), map_progress(1)
        wait_for(lambda: number("#count-done .value") > first, what="the done count going up")
        # The failure is listed, with its traceback, while the long map still runs.
        wait_for(lambda: texts("#failures .failure"), what="the failure listed")
        failure = text("#failures .failure summary")
        assert "failed" in failure and "ValueError: negative input -1" in failure, failure
        assert "1 / 1 (100%), 1 failed" in map_progress(2), map_progress(2)
        assert number("#count-failed .value") == 1
        assert not map_progress(1).startswith(f"{n} / {n}"), "the map ended before the checks: make it longer"
        wait_for(lambda: texts("#stream rect.done"), what="the task stream")
        wait_for(lambda: texts("#throughput polyline"),
                 what="the throughput chart")
        if os.environ.get("CORRAL_SCREENSHOT"):  # mid-run: about half the map done
            wait_for(lambda: number("#count-done .value") >= n // 2, what="half the map done")
            driver.find_element(By.CSS_SELECTOR, "#failures .failure summary").click()
            driver.save_screenshot(os.environ["CORRAL_SCREENSHOT"])
        for thread in threads:
            thread.join(60)
        assert outcome["long"] == [x * x for x in range(n)] and isinstance(outcome["failing"], ValueError)
        wait_for(lambda: map_progress(1).startswith(f"{n} / {n} (100%)"), what="the map complete")
        ex.shutdown()
        wait_for(lambda: text("#connection") == "dashboard not answering", what="the page noticing the end")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# Every key of the status schema (Executor.status(), docs/observability.md), as a broker that has
# them all would say: the page must show each one.
def full_status(now: float) -> dict:
    """A status with every field of the schema, its events ending just before ``now``."""
    return {
        "time": now, "address": "tcp://10.0.0.5:7700",
        "counts": {"queued": 40, "running": 2, "waiting": 3, "done": 1234, "failed": 5, "connected": 2,
                   "departed": 1, "unschedulable": 0},
        "rate": {"done_per_s": 12.5, "failed_per_s": 0.1},
        "queues": {"default": {"queued": 30, "priorities": {"0": 25, "5": 5}}, "gpu": {"queued": 10, "priorities": {}}},
        "workers": [
            {"worker": "node1:100", "host": "node1", "pid": 100, "state": "busy",
             "running": [{"task": 77, "for_s": 3.5}], "tasks": 600, "busy_s": 500.0, "busy_share": 0.83,
             "rss": 256 * 1024 * 1024, "errors": 2, "left": None, "resources": {}, "queues": ["default"]},
            {"worker": "node2:200", "host": "node2", "pid": 200, "state": "idle", "running": [], "tasks": 634,
             "busy_s": 420.0, "busy_share": 0.7, "rss": None, "errors": 3, "left": None, "resources": {},
             "queues": ["default", "gpu"]},
            {"worker": "node3:300", "host": "node3", "pid": 300, "state": "gone", "running": [], "tasks": 5,
             "busy_s": 4.0, "busy_share": 0.1, "rss": None, "errors": 0, "left": "wall_time", "resources": {},
             "queues": ["default"]},
        ],
        "launches": {"launched": 4, "in_flight": 1, "pending": 1, "launch_failures": 0, "retired": 1, "errors": []},
        "objects": {"stored": 2, "bytes": 3 * 1024 * 1024, "sent_bytes": 6 * 1024 * 1024},
        "events": [
            {"task": 75, "worker": "node1:100", "started": now - 5, "finished": now - 2, "state": "done",
             "error": None},
            {"task": 76, "worker": "node2:200", "started": now - 4, "finished": now - 1, "state": "timeout",
             "error": "corral.errors.TaskTimeoutError: task ran longer than 3 s"},
        ],
        "clients": [{"client": "alice", "submitted": 1300, "done": 1234, "failed": 5, "queued": 40, "running": 2}],
    }


def test_the_page_shows_every_field_of_the_status_schema():
    from corral.dashboard import serve

    driver, profile = browser_or_skip()
    server = None
    try:
        server = serve(lambda: full_status(time.time()), "127.0.0.1:0", period=0.2)

        def texts(selector: str) -> list[str]:
            return driver.execute_script(
                "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText)", selector)

        driver.get(server.url)
        wait_for(lambda: len(texts("#workers tbody tr")) == 3, what="the worker rows")
        tiles = " ".join(texts("#counts .tile")).replace("\n", " ")
        for shown in ("QUEUED 40", "RUNNING 2", "WAITING 3", "DONE 1234", "FAILED 5", "WORKERS 2", "DEPARTED 1",
                      "DONE / S 12.5"):
            assert shown in tiles, (shown, tiles)
        busy, idle, gone = texts("#workers tbody tr")
        for shown in ("node1", "busy", "task 77 for 3.5 s", "600", "83%", "256.0 MiB"):
            assert shown in busy, (shown, busy)
        assert "default, gpu" in idle and "wall_time" in gone and "gone" in gone
        assert texts("#failures .failure summary") == [
            "task 76 timeout on node2:200: corral.errors.TaskTimeoutError: task ran longer than 3 s"]
        assert len(texts("#stream rect")) == 2
        assert texts("#queues tbody tr") == ["default\t30\t0: 25, 5: 5", "gpu\t10\t"]
        assert texts("#clients tbody tr") == ["alice\t1300\t1234\t5\t40\t2"]
        extra = texts("#extra")[0]
        assert "4 (1 in flight, 1 pending)" in extra and "2 (3.0 MiB; 6.0 MiB sent)" in extra
        assert texts("#address") == ["tcp://10.0.0.5:7700"]
        wait_for(lambda: texts("#throughput polyline"), what="the throughput line")
        assert driver.execute_script("return document.getElementById('maps-panel').hidden")  # no maps: no panel
    finally:
        if server is not None:
            server.stop()
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
