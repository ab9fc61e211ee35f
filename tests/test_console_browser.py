"""The operator console in a real browser: headless Chromium, driven by Selenium, against two
callagent processes sharing a real redis-server, on the FastGPT emulator.

Calls are placed through the WebSocket API by a caller running its own event loop in a
thread; the test then asserts what the page shows. A screenshot of each view is written to
``test-artifacts/console/`` (gitignored). Needs ``chromium`` and ``chromium-driver``
(``make test`` installs them).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import threading
import urllib.request
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from .redis_server import RedisServer, free_port, start_process, stop_process, wait_for_http

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "console"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
CONSOLE_KEY = "browser-console-key"
REPLY = "<state>1002</state>" + "您好，这里是交通事故快处服务，请问现场有没有人受伤？" * 4
SPOKEN = "您好，这里是交通事故"
CHUNK_DELAY = 0.08  # four characters a chunk: a reply streams for about two seconds
WAIT = 8.0
FALLBACK = "抱歉，系统暂时无法处理，正在为您转接人工客服，请稍候。"
T = TypeVar("T")


class Caller:
    """Telephony-gateway side: WebSocket calls placed from a thread with its own event loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="caller", daemon=True)
        self.thread.start()
        self.http: aiohttp.ClientSession | None = None
        self.sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def chat(self, port: int, session: str, text: str) -> None:
        self.run(self._chat(port, session, text))

    async def _chat(self, port: int, session: str, text: str) -> None:
        if self.http is None:
            self.http = aiohttp.ClientSession()
        ws = self.sockets.get(session)
        if ws is None:
            ws = self.sockets[session] = await self.http.ws_connect(f"http://127.0.0.1:{port}/ws")
            self.messages[session] = []
            self.loop.create_task(self._read(session, ws))
        await ws.send_json({"type": "chat", "sessionId": session, "text": text})

    async def _read(self, session: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                self.messages[session].append(msg.json())

    def interrupt(self, session: str, spoken: str) -> None:
        self.run(self.sockets[session].send_json({"type": "interrupt", "sessionId": session, "spokenText": spoken}))

    def ended(self, session: str) -> list[str]:
        return [m["status"] for m in self.messages.get(session, []) if m["type"] == "done"]

    def close(self) -> None:
        async def close_all() -> None:
            for ws in self.sockets.values():
                await ws.close()
            if self.http is not None:
                await self.http.close()

        self.run(close_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


class Cluster:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.redis = RedisServer(log_dir)
        self.processes: list[Any] = []
        self.ports: dict[str, int] = {}

    def start(self) -> None:
        self.redis.start()
        emulator = free_port()
        args = [sys.executable, "-m", "scripts.emulators.fastgpt", "--port", str(emulator)]
        args += ["--chunk-delay", str(CHUNK_DELAY), "--reply", REPLY]
        self._start("emulator", emulator, args, {"PYTHONPATH": str(ROOT)}, "/__emulator/streams")
        env = {
            "CALLAGENT_STORE": self.redis.url,
            "CALLAGENT_UPSTREAM": "fastgpt",
            "FASTGPT_BASE_URL": f"http://127.0.0.1:{emulator}",
            "FASTGPT_API_KEY": "fastgpt-test",
            "FASTGPT_APP_ID": "app1",
            "CALLAGENT_CONSOLE_KEYS": f"alice:{CONSOLE_KEY}",
            "CALLAGENT_LOG_FORMAT": "json",
            "CALLAGENT_SHUTDOWN_TIMEOUT": "1",
            "PYTHONPATH": str(ROOT),
        }
        for name in ("a", "b"):
            port = free_port()
            args = [sys.executable, "-m", "callagent", "serve", "--port", str(port), "--env-file", ""]
            self._start(name, port, args, env, "/readyz")

    def _start(self, name: str, port: int, args: list[str], env: dict[str, str], ready: str) -> None:
        log_path = self.log_dir / f"{name}-{port}.log"
        process = start_process(args, log_path, env=os.environ | env, cwd=self.log_dir)
        self.processes.append(process)
        self.ports[name] = port
        try:
            wait_for_http(port, ready, process)
        except RuntimeError as e:
            raise RuntimeError(f"{name} did not start: {e}\n{log_path.read_text()[-3000:]}") from None

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process)
        self.redis.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("console-browser"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def caller() -> Iterator[Caller]:
    caller = Caller()
    yield caller
    caller.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(
            "chromium and chromedriver are missing: `make test` installs them (apt-get install chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1440,900",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def page(browser: WebDriver, cluster: Cluster) -> WebDriver:
    """The console of instance A, opened with the console key."""
    browser.get(f"http://127.0.0.1:{cluster.ports['a']}/console")
    until(browser, lambda d: d.find_element(By.ID, "key-form").is_displayed())
    browser.find_element(By.ID, "key").send_keys(CONSOLE_KEY)
    browser.find_element(By.ID, "key-submit").click()
    until(browser, lambda d: "live · alice" in d.find_element(By.ID, "feed-status").text)
    return browser


def until(driver: WebDriver, condition: Any, timeout: float = WAIT) -> Any:
    # The page re-renders a turn on every delta: an element found a moment ago may be gone.
    wait = WebDriverWait(driver, timeout, poll_frequency=0.02, ignored_exceptions=[StaleElementReferenceException])
    return wait.until(condition)


# One atomic read of the transcript's last turn (the page re-renders a turn on every delta).
LAST_TURN_STATE = """
const turns = document.querySelectorAll('#transcript .turn');
if (!turns.length) return null;
const last = turns[turns.length - 1];
return {turns: turns.length, cls: last.className, reply: last.querySelector('.reply').textContent};
"""


def row(driver: WebDriver, session: str) -> Any:
    rows = driver.find_elements(By.CSS_SELECTOR, f'#calls tr[data-session="{session}"]')
    return rows[0] if rows else None


def turn_nodes(driver: WebDriver) -> list[Any]:
    return driver.find_elements(By.CSS_SELECTOR, "#transcript .turn")


def reply_of_last_turn(driver: WebDriver) -> str:
    nodes = turn_nodes(driver)
    return str(nodes[-1].find_element(By.CSS_SELECTOR, ".reply").text) if nodes else ""


def shot(driver: WebDriver, name: str) -> None:
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def test_a_new_call_appears(page: WebDriver, cluster: Cluster, caller: Caller) -> None:
    caller.chat(cluster.ports["a"], "call-a1", "喂")
    new_row = until(page, lambda d: row(d, "call-a1"))
    assert "喂" in new_row.text
    until(page, lambda d: "waiting" in row(d, "call-a1").text)
    shot(page, "live-calls")


def test_deltas_stream_into_the_transcript(page: WebDriver, cluster: Cluster, caller: Caller) -> None:
    until(page, lambda d: row(d, "call-a1")).click()
    until(page, lambda d: len(turn_nodes(d)) == 1)
    caller.chat(cluster.ports["a"], "call-a1", "方便")
    # Watch the running turn until it completes: its reply must be seen growing meanwhile.
    seen_running: set[str] = set()

    def completed(d: WebDriver) -> bool:
        state = d.execute_script(LAST_TURN_STATE)
        if state and "running" in state["cls"] and state["reply"]:
            seen_running.add(state["reply"])
        return bool(state) and state["turns"] == 2 and "completed" in state["cls"]

    until(page, completed)
    assert len(seen_running) >= 2, seen_running  # at least two different lengths while it ran
    assert reply_of_last_turn(page) == REPLY.removeprefix("<state>1002</state>")
    assert page.find_elements(By.CSS_SELECTOR, "#latency svg rect.bar")  # the latency chart drew the turns
    shot(page, "call")


def test_a_barge_in_shows_what_the_caller_heard(page: WebDriver, cluster: Cluster, caller: Caller) -> None:
    caller.chat(cluster.ports["a"], "call-a1", "有人受伤吗")
    until(page, lambda d: len(turn_nodes(d)) == 3 and len(reply_of_last_turn(d)) > len(SPOKEN))
    caller.interrupt("call-a1", SPOKEN)
    struck = until(page, lambda d: turn_nodes(d)[-1].find_elements(By.CSS_SELECTOR, "del.unheard"))
    heard = turn_nodes(page)[-1].find_element(By.CSS_SELECTOR, ".heard").text
    assert heard == SPOKEN and struck[0].text
    assert "cancelled" in turn_nodes(page)[-1].get_attribute("class")
    shot(page, "barge-in")


def test_the_interrupt_button_stops_a_running_turn(page: WebDriver, cluster: Cluster, caller: Caller) -> None:
    caller.chat(cluster.ports["a"], "call-a1", "没有")
    until(page, lambda d: len(turn_nodes(d)) == 4 and reply_of_last_turn(d))
    page.find_element(By.ID, "btn-interrupt").click()
    until(page, lambda d: "cancelled" in turn_nodes(d)[-1].get_attribute("class"))
    until(page, lambda d: "alice interrupted the turn" in d.find_element(By.ID, "transcript").text)
    assert caller.ended("call-a1")[-1] == "cancelled"  # the gateway got its `done`, cancelled
    assert len(reply_of_last_turn(page)) < len(REPLY) - len("<state>1002</state>")


def test_a_failed_turn_is_shown_in_red_with_its_error(page: WebDriver, cluster: Cluster, caller: Caller) -> None:
    fault = urllib.request.Request(
        f"http://127.0.0.1:{cluster.ports['emulator']}/__emulator/fault",
        data=b'{"mode": "error_before", "count": 1}',
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(fault, timeout=WAIT) as response:
        assert response.status == 200
    caller.chat(cluster.ports["a"], "call-a1", "喂？")
    failed = until(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#transcript .turn.failed .agent.failed"))
    turn = turn_nodes(page)[-1]
    assert "upstream_quota" in turn.find_element(By.CSS_SELECTOR, ".meta .error").text  # "账号余额不足"
    assert turn.find_element(By.CSS_SELECTOR, ".reply").text == FALLBACK  # what the caller heard instead
    red = "rgba(198, 40, 40, 1)"  # --bad in console.css
    assert turn.find_element(By.CSS_SELECTOR, ".reply").value_of_css_property("color") == red
    assert failed and turn.find_element(By.CSS_SELECTOR, ".badge.failed").text == "failed"
    until(page, lambda d: "failed" in row(d, "call-a1").text)
    shot(page, "failed-turn")


def test_a_call_on_another_instance_appears_through_redis(page: WebDriver, cluster: Cluster, caller: Caller) -> None:
    caller.chat(cluster.ports["b"], "call-b1", "你好")
    other = until(page, lambda d: row(d, "call-b1"))
    instance_a = row(page, "call-a1").find_elements(By.CSS_SELECTOR, "td")[6].text
    assert other.find_elements(By.CSS_SELECTOR, "td")[6].text != instance_a
    until(page, lambda d: "waiting" in row(d, "call-b1").text)
    shot(page, "two-instances")


def test_overview_and_softphone(page: WebDriver) -> None:
    page.find_element(By.ID, "tab-overview").click()
    until(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#ov-turns svg path.line"))
    assert page.find_elements(By.CSS_SELECTOR, "#ov-stages svg rect.bar")
    shot(page, "overview")
    page.find_element(By.ID, "tab-phone").click()
    page.find_element(By.ID, "phone-text").send_keys("喂，你好")
    page.find_element(By.ID, "phone-send").click()
    until(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#phone-log .line.agent")) == 1)
    until(page, lambda d: SPOKEN in d.find_element(By.CSS_SELECTOR, "#phone-log .line.agent").text)
    shot(page, "softphone")


def test_the_page_logged_no_error(page: WebDriver) -> None:
    # The only expected one: the first feed request, made before the key was given (401).
    errors = [e["message"] for e in page.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
    assert errors == []
