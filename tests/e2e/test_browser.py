"""End to end: the web client (``src/roomcast/web/``) in a real browser.

Each test starts its own in-process server (``start_server`` in ``conftest.py``) and drives
Debian's Chromium (``/usr/bin/chromium``) with Playwright; Playwright's own browsers are never
downloaded. Without Chromium the tests are skipped, except under ``CI=true``, where they fail:
the CI installs it (``.ci/run``).

The tests run on asyncio's event loop only: what they check is the page; the server's
transports on uvloop are covered by ``test_line_chat.py``. No test sleeps: every wait is
Playwright's ``expect`` (it polls the page, a few seconds at most) or a read with a timeout.
Each test saves screenshots under ``test-output/<test name>/`` (git-ignored). Line-protocol
clients come from ``conftest.py``; accounts hash passwords at a trivial argon2 cost
(``CHEAP``) so that logins do not dominate the run time.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)
from websockets.asyncio.client import ClientConnection, connect

from roomcast.auth import Cost, Passwords
from roomcast.server import Server
from tests.e2e.conftest import TIMEOUT, Clients, StartServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output"
WAIT_MS = int(TIMEOUT * 1000)  # the most any one wait may take, for Playwright
RECONNECT_MS = 15_000  # a page retries after at most 10 s (its backoff), then says hello
DESKTOP: ViewportSize = {"width": 1100, "height": 700}
PHONE: ViewportSize = {"width": 390, "height": 844}
PASSWORD = "correct horse battery"
CHEAP = Cost(time_cost=1, memory_cost=8, parallelism=1)  # argon2id at almost no cost

pytestmark = pytest.mark.asyncio(loop_factories=["asyncio"])
expect.set_options(timeout=WAIT_MS)


# --- the browser side ---------------------------------------------------------------------


class WebUser:
    """One person in the browser: a context of its own (own storage) with one page."""

    def __init__(self, context: BrowserContext, page: Page, shots: Path) -> None:
        self.context = context  # cookies and localStorage of this person only
        self.page = page  # the chat page
        self.shots = shots  # where screenshots go
        self.errors: list[str] = []  # uncaught exceptions of the page's scripts
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    @property
    def messages(self) -> Locator:
        """The list of rendered messages and system lines."""
        return self.page.locator("#messages")

    def message(self, text: str) -> Locator:
        """The text of the chat messages that read exactly ``text``."""
        return self.messages.locator("li.msg .text").filter(
            has_text=re.compile(f"^{re.escape(text)}$")
        )

    async def sign_in(self, name: str, password: str = "", *, register: bool = False) -> None:
        """Fill the sign-in form (no password: a guest) and wait until the chat shows."""
        await self.page.locator("#signin-name").fill(name)
        await self.page.locator("#signin-password").fill(password)
        button = "Create account" if register else "Sign in"
        await self.page.get_by_role("button", name=button, exact=True).click()
        await expect(self.page.locator("#me-name")).to_have_text(name)
        await expect(self.page.locator("#conv-title")).to_have_text("#general")

    async def name(self) -> str:
        """The name the page is signed in with."""
        return await self.page.locator("#me-name").inner_text()

    async def say(self, text: str) -> None:
        """Type ``text`` in the composer and press Enter."""
        box = self.page.locator("#composer-input")
        await box.fill(text)
        await box.press("Enter")
        await expect(box).to_have_value("")

    async def chat_texts(self) -> list[str]:
        """The texts of the chat messages shown, in order."""
        return await self.messages.locator("li.msg .text").all_text_contents()

    async def seqs(self) -> list[int]:
        """The seq of every room event shown (messages and system lines), in order."""
        seqs: list[int] = await self.messages.evaluate(
            "list => [...list.querySelectorAll('li[data-seq]')].map(li => Number(li.dataset.seq))"
        )
        return seqs

    async def shot(self, label: str) -> Path:
        """Save a screenshot as ``<label>.png`` in the test's output folder."""
        path = self.shots / f"{label}.png"
        await self.page.mouse.move(0, 0)  # no hover highlight in the picture
        await self.page.screenshot(path=str(path), animations="disabled")
        return path


Web = Callable[..., Awaitable[WebUser]]  # web(server, viewport=DESKTOP) -> a new WebUser


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium; the test is skipped when it is missing, or failed under CI=true."""
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing: apt-get install chromium (the CI does, in .ci/run)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    """Chromium, headless, closed after the test."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Path:
    """``test-output/<test name>/``, emptied: where the test's screenshots go."""
    folder = OUTPUT / re.sub(r"[^\w.-]+", "-", request.node.name).strip("-")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@pytest.fixture
async def web(browser: Browser, shots: Path) -> AsyncIterator[Web]:
    """Opens the chat page of a server for a new person; checks no page script failed."""
    users: list[WebUser] = []

    async def open_page(server: Server, viewport: ViewportSize = DESKTOP) -> WebUser:
        assert server.web is not None
        context = await browser.new_context(viewport=viewport)
        context.set_default_timeout(WAIT_MS)
        page = await context.new_page()
        user = WebUser(context, page, shots)
        users.append(user)
        await page.goto(f"http://127.0.0.1:{server.web.port}/")
        return user

    yield open_page
    for user in users:
        await user.context.close()  # does nothing for a context the test closed already
    assert [e for user in users for e in user.errors] == [], "a page script failed"


# --- tests --------------------------------------------------------------------------------


async def cheap_server(start_server: StartServer, **overrides: Any) -> Server:
    """A server (``Config`` overrides as for ``start_server``) that hashes passwords cheaply."""
    server = await start_server(**overrides)
    server.hub.passwords = Passwords(CHEAP)
    return server


async def test_two_browser_users_see_each_others_messages(
    start_server: StartServer, web: Web
) -> None:
    """A guest and an account holder, each in a browser, see each other's messages."""
    server = await cheap_server(start_server)
    alice = await web(server)
    await alice.sign_in("alice")
    bob = await web(server)
    await bob.sign_in("bob", PASSWORD, register=True)

    await alice.say("hi bob")
    await expect(bob.message("hi bob")).to_have_count(1)
    await bob.say("hi alice")
    await expect(alice.message("hi alice")).to_have_count(1)

    assert await alice.chat_texts() == ["hi bob", "hi alice"]
    assert await bob.chat_texts() == ["hi bob", "hi alice"]
    await expect(alice.page.locator("#member-list li.online")).to_have_count(2)
    await alice.shot("alice")
    await bob.shot("bob")


async def test_returning_user_sees_missed_messages_under_the_divider(
    start_server: StartServer, web: Web
) -> None:
    """Someone who closed the page and logs in again finds what was said meanwhile below a
    "5 new messages while you were away" divider."""
    server = await cheap_server(start_server)
    alice = await web(server)
    await alice.sign_in("alice", PASSWORD, register=True)
    bob = await web(server)
    await bob.sign_in("bob")
    await bob.say("before you left")
    await expect(alice.message("before you left")).to_have_count(1)

    await alice.context.close()
    await expect(bob.messages.locator("li[data-type=presence][data-from=alice]")).to_have_count(1)
    missed = [f"missed {n}" for n in range(1, 6)]
    for text in missed:
        await bob.say(text)
    await expect(bob.message("missed 5")).to_have_count(1)

    back = await web(server)
    await back.sign_in("alice", PASSWORD)
    divider = back.messages.locator("li.divider")
    await expect(divider).to_have_text("5 new messages while you were away")
    await expect(back.message("missed 5")).to_have_count(1)
    after_divider = back.messages.locator("li.divider ~ li.msg .text")
    assert await after_divider.all_text_contents() == missed
    assert await back.chat_texts() == ["before you left", *missed]
    await back.shot("returning")


async def test_line_client_and_browser_see_each_other(
    start_server: StartServer, clients: Clients, web: Web
) -> None:
    """A raw TCP line client and a browser user in the same room see each other's messages."""
    server = await start_server()
    dave = await web(server)
    await dave.sign_in("dave")
    carol = await clients.connect(server, "carol")
    await expect(dave.messages.locator("li[data-type=join][data-from=carol]")).to_have_count(1)
    await carol.send("hello from nc")
    await expect(dave.message("hello from nc")).to_have_count(1)
    await dave.say("hello from the web")
    await carol.expect("[#general] dave: hello from the web", exact=True)
    await dave.shot("browser")


async def test_markup_in_a_message_is_shown_as_text(start_server: StartServer, web: Web) -> None:
    """An HTML payload sent as a message is shown as its text and never runs."""
    payload = "<img src=x onerror=window.__pwned=1>"
    server = await start_server()
    alice = await web(server)
    await alice.sign_in("alice")
    mallory = await web(server)
    await mallory.sign_in("mallory")

    await mallory.say(payload)
    for user in (alice, mallory):
        await expect(user.message(payload)).to_have_count(1)
        assert await user.messages.locator("li.msg .text").last.text_content() == payload
        assert await user.messages.locator("img").count() == 0
        assert await user.page.evaluate("typeof window.__pwned") == "undefined"
    await alice.shot("payload-as-text")


async def test_scrolling_to_the_top_loads_older_history(
    start_server: StartServer, clients: Clients, web: Web
) -> None:
    """Scrolling to the top of a room with 200 messages loads the older ones, page by page,
    keeping the message that was at the top in view, until the room's start."""
    server = await start_server(rate=1000.0, burst=1000)  # the filler sends 200 lines at once
    texts = [f"history {n:03}" for n in range(200)]
    filler = await clients.connect(server, "filler")
    await filler.send(*texts)
    await filler.expect(f"[#general] filler: {texts[-1]}", exact=True)
    reader = await web(server)
    await reader.sign_in("reader")
    shown = reader.messages.locator("li.msg")
    await expect(shown.last).to_have_text(re.compile(texts[-1]))
    first_page = await shown.count()
    assert 0 < first_page < len(texts)
    top_text = (await reader.chat_texts())[0]
    await reader.shot("newest")

    scroller = reader.page.locator("#scroller")
    await scroller.evaluate("box => { box.scrollTop = 0; }")
    await expect(shown).not_to_have_count(first_page)
    assert await scroller.evaluate("box => box.scrollTop") > 0, "the view jumped to the top"
    await expect(reader.message(top_text)).to_be_in_viewport()
    await reader.shot("older-page")

    start = reader.messages.locator("li.start")
    for _ in range(len(texts) // 50 + 2):  # one page of 50 per scroll, at most
        if await start.count():
            break
        count = await shown.count()
        await scroller.evaluate("box => { box.scrollTop = 0; }")
        await expect(shown.nth(count)).to_be_attached()
    await expect(start).to_have_text("This is the start of #general.")
    assert await reader.chat_texts() == texts
    await reader.shot("start")


async def test_page_resumes_after_a_server_restart(
    start_server: StartServer, clients: Clients, web: Web, tmp_path: Path
) -> None:
    """Across a server restart, an account and a guest page show the banner, reconnect and
    then hold every message exactly once: those sent before, while they were away, after."""
    storage = {"store": f"sqlite:{tmp_path}/rc.db", "data_dir": str(tmp_path)}
    first = await cheap_server(start_server, **storage)
    assert first.web is not None
    port = first.web.port  # the new server listens where the page reconnects
    erin = await web(first)
    await erin.sign_in("erin", PASSWORD, register=True)
    finn = await web(first)
    await finn.sign_in("finn")
    gus = await clients.connect(first, "gus")
    await gus.send("before 1", "before 2")
    for user in (erin, finn):
        await expect(user.message("before 2")).to_have_count(1)

    await first.stop()
    for user in (erin, finn):
        await expect(user.page.locator("#banner")).to_have_text("disconnected — reconnecting…")
    await erin.shot("erin-disconnected")

    second = await cheap_server(start_server, **storage, http_port=port)
    hal = await clients.connect(second, "hal")
    await hal.send("while down 1", "while down 2", "while down 3")
    await hal.expect("[#general] hal: while down 3", exact=True)
    for user in (erin, finn):
        await expect(user.page.locator("#banner")).to_be_hidden(timeout=RECONNECT_MS)
        await expect(user.message("while down 3")).to_have_count(1)
    await hal.send("after 1", "after 2")
    for user in (erin, finn):
        await expect(user.message("after 2")).to_have_count(1)

    expected = ["before 1", "before 2", "while down 1", "while down 2", "while down 3"]
    expected += ["after 1", "after 2"]
    for user in (erin, finn):
        assert await user.chat_texts() == expected
        seqs = await user.seqs()
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a duplicate or a hole"
        await user.shot(f"{await user.name()}-resumed")


async def test_enter_sends_and_shift_enter_starts_a_new_line(
    start_server: StartServer, web: Web
) -> None:
    """In the composer, Shift+Enter adds a line to the text and Enter sends it."""
    server = await start_server()
    user = await web(server)
    await user.sign_in("typist")
    box = user.page.locator("#composer-input")
    await box.press_sequentially("first line")
    await box.press("Shift+Enter")
    await box.press_sequentially("second line")
    await expect(box).to_have_value("first line\nsecond line")
    assert await user.messages.locator("li.msg").count() == 0, "Shift+Enter sent the message"
    await user.shot("composing")

    await box.press("Enter")
    await expect(user.messages.locator("li.msg")).to_have_count(1)
    await expect(box).to_have_value("")
    await user.shot("sent")


async def test_a_message_typed_on_two_lines_is_shown_on_two_lines(
    start_server: StartServer, web: Web
) -> None:
    """A message typed with Shift+Enter between two lines is shown on two lines."""
    server = await start_server()
    user = await web(server)
    await user.sign_in("typist")
    box = user.page.locator("#composer-input")
    await box.fill("first line\nsecond line")
    await box.press("Enter")
    await expect(user.messages.locator("li.msg")).to_have_count(1)
    await user.shot("two-lines")
    assert await user.chat_texts() == ["first line\nsecond line"]


async def test_phone_sized_screen(start_server: StartServer, web: Web) -> None:
    """On a 390x844 screen the side panels fold behind buttons and a message can be sent."""
    server = await start_server()
    user = await web(server, viewport=PHONE)
    await user.sign_in("mobile")
    sidebar = user.page.locator("#sidebar")
    await expect(sidebar).to_be_hidden()
    await expect(user.page.locator("#members-panel")).to_be_hidden()

    await user.say("sent from a phone")
    await expect(user.message("sent from a phone")).to_be_in_viewport()
    composer_box = await user.page.locator("#composer").bounding_box()
    assert composer_box is not None
    assert composer_box["x"] + composer_box["width"] <= PHONE["width"]
    await user.shot("phone")

    toggle = user.page.get_by_role("button", name="Rooms")
    await toggle.click()
    await expect(sidebar).to_be_visible()
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    await user.shot("phone-rooms")
    await user.page.keyboard.press("Escape")
    await expect(sidebar).to_be_hidden()


async def test_rooms_unread_counts_and_private_messages(
    start_server: StartServer, web: Web
) -> None:
    """Joining and switching rooms, unread counts of the rooms not shown, and a private
    message that opens a direct-message conversation."""
    server = await start_server()
    alice = await web(server)
    await alice.sign_in("alice")
    bob = await web(server)
    await bob.sign_in("bob")

    await bob.page.locator("#join-input").fill("Random")
    await bob.page.get_by_role("button", name="Join", exact=True).click()
    await expect(bob.page.locator("#conv-title")).to_have_text("#random")
    await alice.say("in general")
    general = bob.page.locator("#room-list button[data-key='#general']")
    await expect(general.locator(".badge")).to_have_text("1")

    await alice.page.locator("#member-list").get_by_role("button", name="bob").click()
    await expect(alice.page.locator("#conv-title")).to_have_text("@bob")
    await alice.say("psst")
    dm = bob.page.locator("#dm-list button[data-key='@alice']")
    await expect(dm.locator(".badge")).to_have_text("1")
    await bob.shot("unread")

    await dm.click()
    await expect(bob.message("psst")).to_have_count(1)
    await general.click()
    await expect(bob.message("in general")).to_have_count(1)
    await expect(general.locator(".badge")).to_have_count(0)
    await bob.page.get_by_role("button", name="Leave #general").click()
    await expect(general).to_have_count(0)
    await expect(bob.page.locator("#conv-title")).not_to_have_text("#general")
    await bob.shot("left-general")


async def test_a_private_conversation_is_back_after_signing_in_again_and_scrolls_back(
    start_server: StartServer, clients: Clients, web: Web
) -> None:
    """An account that signs in again and opens @bob finds its earlier private conversation
    with bob, the newest messages first, and scrolling up loads the older ones to its start."""
    server = await cheap_server(start_server, rate=1000.0, burst=1000)
    alice = await web(server)
    await alice.sign_in("alice", PASSWORD, register=True)
    bob = await clients.connect(server, "bob")
    await bob.send("/register correct-horse-9")  # one word: the line protocol's argument
    await bob.expect("-- registered bob: ", max_lines=5)
    texts = [f"private {n:03}" for n in range(120)]
    await bob.send(*(f"/msg alice {text}" for text in texts))
    await bob.expect(f"[pm bob -> alice] {texts[-1]}", exact=True, max_lines=300)
    await alice.page.locator("#dm-list button[data-key='@bob']").click()
    await expect(alice.message(texts[-1])).to_have_count(1)
    await alice.say("my answer")
    await bob.expect("[pm alice -> bob] my answer", exact=True)
    await alice.context.close()
    await bob.expect("[#general] <-- alice quit", max_lines=10)

    back = await web(server)
    await back.sign_in("alice", PASSWORD)
    await back.page.locator("#join-input").fill("@bob")
    await back.page.get_by_role("button", name="Join", exact=True).click()
    await expect(back.page.locator("#conv-title")).to_have_text("@bob")
    await expect(back.message("my answer")).to_have_count(1)
    await expect(back.messages.locator("li.msg.mine .text")).to_have_text(["my answer"])
    shown = back.messages.locator("li.msg")
    first_page = await shown.count()
    assert 0 < first_page < len(texts)
    await back.shot("newest")

    scroller = back.page.locator("#scroller")
    start = back.messages.locator("li.start")
    for _ in range(len(texts) // 50 + 2):  # one page of 50 per scroll, at most
        if await start.count():
            break
        count = await shown.count()
        await scroller.evaluate("box => { box.scrollTop = 0; }")
        await expect(shown.nth(count)).to_be_attached()
    await expect(start).to_have_text("Private messages between you and bob: only you two see them.")
    assert await back.chat_texts() == [*texts, "my answer"]
    await back.shot("start")


async def test_a_former_guests_messages_are_not_shown_as_the_accounts_own(
    start_server: StartServer, clients: Clients, web: Web
) -> None:
    """When an account bob signs in after a guest bob talked, the guest's messages are marked
    as a guest's and not as the account's own; only what the account says is."""
    server = await cheap_server(start_server)
    witness = await clients.connect(server, "carol")
    guest = await web(server)
    await guest.sign_in("bob")
    await guest.say("said by a guest")
    await expect(guest.messages.locator("li.msg.mine .text")).to_have_text(["said by a guest"])
    await guest.context.close()
    await witness.expect("[#general] <-- bob quit", max_lines=10)

    account = await web(server)
    await account.sign_in("bob", PASSWORD, register=True)
    await expect(account.message("said by a guest")).to_have_count(1)
    await account.say("said by the account")
    await expect(account.message("said by the account")).to_have_count(1)
    await expect(account.messages.locator("li.msg.mine .text")).to_have_text(
        ["said by the account"]
    )
    by_guest = account.messages.locator("li.msg").filter(has_text="said by a guest")
    await expect(by_guest.locator(".guest")).to_have_text("guest")
    by_account = account.messages.locator("li.msg").filter(has_text="said by the account")
    await expect(by_account).not_to_have_class(re.compile(r"\bcont\b"))  # a group of its own
    await expect(by_account.locator(".guest")).to_have_count(0)
    await account.shot("guest-and-account")


# --- the protocol under the page ----------------------------------------------------------


async def _frames(
    ws: ClientConnection, until: Callable[[dict[str, Any]], bool]
) -> list[dict[str, Any]]:
    """Read frames (batches flattened) until one satisfies ``until``; bounded in time."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        for _ in range(1000):
            frame = json.loads(await ws.recv())
            events = frame["events"] if frame["type"] == "batch" else [frame]
            seen += events
            if any(until(e) for e in events):
                return seen
    raise AssertionError(f"no such frame in 1000: {seen[-5:]}")


async def test_guest_resume_gets_no_event_twice(start_server: StartServer) -> None:
    """A guest that reconnects (hello, then join #general since its last seq, as the page
    does) receives each room event once."""
    server = await start_server()
    assert server.web is not None
    url = f"ws://127.0.0.1:{server.web.port}/ws"
    async with connect(url) as other:
        await other.send(json.dumps({"type": "hello", "name": "other"}))
        await other.send(json.dumps({"type": "send", "room": "#general", "text": "missed"}))
        said = await _frames(other, lambda e: e.get("text") == "missed")
        since = next(e["seq"] for e in said if e.get("text") == "missed") - 1
        async with connect(url) as guest:
            await guest.send(json.dumps({"type": "hello", "name": "guest"}))
            frames = await _frames(guest, lambda e: e["type"] == "join")  # its own, live
            join = {"type": "join", "room": "#general", "since": since}
            await guest.send(json.dumps(join))
            frames += await _frames(guest, lambda e: e.get("text") == "missed")
            await guest.send(json.dumps({"type": "send", "room": "#general", "text": "last"}))
            frames += await _frames(guest, lambda e: e.get("text") == "last")
    seqs = [e["seq"] for e in frames if e["type"] in {"message", "join"}]
    assert len(seqs) == len(set(seqs)), f"seqs received: {seqs}"
