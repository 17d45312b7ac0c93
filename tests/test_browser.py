"""The dashboard in a real browser: Playwright driving Debian's Chromium, headless, against a private
Redis with a worker and a master running in this process.

Without a Chromium these tests fail under CI (env ``CI`` set: ``.ci/run`` installs it) and skip,
saying why, elsewhere, as the Prometheus tests do. Playwright's own browser download is not used; the
OS package's binary is (``CHROMIUM`` below).

``GEVENTSCHED_SCREENSHOTS=DIR`` saves the overview and a job page there (``docs/img`` for the README).
"""

import math
import os
import shutil
import time

import gevent
import pytest
from playwright.sync_api import expect, sync_playwright

from conftest import wait_until
from geventsched import lookup
from test_dashboard import DashboardSystem

CHROMIUM = shutil.which("chromium")
SCREENSHOTS = os.environ.get("GEVENTSCHED_SCREENSHOTS")
#: How long the page may take to show a change: the dashboard promises 2 s; slack for a busy machine.
LIVE = 5000


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        reason = "chromium is not installed (Debian/Ubuntu: apt-get install chromium)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; CI must install it")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def system(redis_url, namespace):
    made = DashboardSystem(redis_url, namespace)
    yield made
    made.close()


@pytest.fixture
def page(browser):
    """A fresh page that accepts confirmation dialogs, and fails the test on any console error (a
    script or style the Content-Security-Policy blocked would show there)."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    errors = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    yield page
    context.close()
    assert errors == []


def open_live(page, url):
    """Open ``url`` and wait for its live stream; mark the document, so that a reload would show."""
    page.goto(url)
    expect(page.locator("#live-state")).to_have_text("live", timeout=LIVE)
    page.evaluate("window.notReloaded = true")


def not_reloaded(page):
    return page.evaluate("window.notReloaded === true")


def shoot(page, name):
    if SCREENSHOTS:
        os.makedirs(SCREENSHOTS, exist_ok=True)
        page.screenshot(path=os.path.join(SCREENSHOTS, name), full_page=True)


def test_a_worker_appears_on_the_overview_once_it_starts(system, page):
    site = system.dashboard()
    open_live(page, f"http://127.0.0.1:{site.port}/")
    expect(page.locator("#nodes")).to_have_count(0)
    worker = system.worker(channels=[str(n) for n in range(1, 9)], concurrency=500)
    expect(page.locator("#workers")).to_contain_text(worker.id, timeout=LIVE)
    expect(page.locator("#nodes")).to_contain_text("8")  # its channels
    assert not_reloaded(page)
    system.master()
    if SCREENSHOTS:
        traffic(system, seconds=90)  # for the picture: a few minutes' worth of bars and latencies
    handles = system.client.submit_many([("echo", [n], {}) for n in range(200)] + [("sleep", [30], {})] * 3)
    wait_until(lambda: all(h.wait(0.1) for h in handles[:200]), timeout=20, message="the jobs to finish")
    expect(page.locator("#count-running .n")).to_have_text("3", timeout=LIVE)
    shoot(page, "dashboard-overview.png")


def traffic(system, seconds):
    """Jobs at a rate that rises and falls, a few of them failing, for ``seconds``."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        phase = (time.monotonic() - started) / seconds
        rate = int(40 + 160 * math.sin(math.pi * phase) ** 2)
        specs = [("sleep", [0.05 + 0.5 * phase * (n % 3)], {}) for n in range(rate)] + [("fail", ["disk full"], {})]
        system.client.submit_many(specs, reply=False)
        gevent.sleep(1.0)


def test_a_count_changes_without_a_reload(system, page):
    site = system.dashboard()
    open_live(page, f"http://127.0.0.1:{site.port}/")
    queued = page.locator("#count-queued .n")
    expect(queued).to_have_text("0")
    system.client.submit_many([("echo", [n], {}) for n in range(7)], reply=False)  # no master: they wait
    expect(queued).to_have_text("7", timeout=LIVE)
    system.worker()
    system.master()
    expect(queued).to_have_text("0", timeout=LIVE)
    expect(page.locator("#count-finished .n")).to_have_text("7", timeout=LIVE)
    assert not_reloaded(page)


def test_a_failed_job_page_shows_its_traceback(system, page):
    system.worker()
    system.master()
    failed = system.client.submit("fail", "the disk is full")
    assert failed.wait(10).status == "error"
    site = system.dashboard()
    page.goto(f"http://127.0.0.1:{site.port}/")
    page.fill("header input[name=q]", failed.id)  # search by id: straight to the job's page
    page.press("header input[name=q]", "Enter")
    expect(page.locator("h1")).to_have_text(f"Job {failed.id}")
    expect(page.locator("#job-state")).to_have_text("finished")
    expect(page.locator("#error")).to_have_text("TaskFailure: the disk is full")
    traceback = page.locator("#traceback")
    expect(traceback).to_contain_text("Traceback (most recent call last)")
    expect(traceback).to_contain_text("raise TaskFailure(str(message))")
    shoot(page, "dashboard-job.png")


def test_a_requeued_dead_letter_runs_and_finishes(system, page):
    first, second = system.dead_letters([("echo", ["first"], {}), ("echo", ["second"], {})])
    system.worker()
    system.master()
    site = system.dashboard()
    open_live(page, f"http://127.0.0.1:{site.port}/jobs?state=dead")
    rows = page.locator("#jobs tbody tr")
    expect(rows).to_have_count(2)
    page.locator(f'tr[data-id="{first}"] button', has_text="Requeue").click()  # from the list
    expect(page.locator(".message")).to_have_text("1 dead letter requeued")
    expect(rows).to_have_count(1)
    wait_until(lambda: (lookup.job_info(system.store, first) or {}).get("status") == "ok", timeout=10,
               message="the first requeued job to finish")

    page.locator(f'a.job-link:has-text("{second}")').click()  # from its own page: watch it finish
    expect(page.locator("#job-state")).to_have_text("dead")
    page.locator("button", has_text="Requeue").click()
    expect(page.locator("#job-state")).to_have_text("finished", timeout=LIVE)
    expect(page.locator("#job-status")).to_have_text("ok")


def test_a_running_job_is_cancelled_from_its_page(system, page):
    system.worker()
    system.master()
    handle = system.client.submit("sleep", 60)
    site = system.dashboard()
    wait_until(lambda: (lookup.job_info(system.store, handle.id) or {}).get("state") == "running", timeout=10,
               message="the job to run")
    open_live(page, f"http://127.0.0.1:{site.port}/job?id={handle.id}")
    expect(page.locator("#job-state")).to_have_text("running")
    page.locator("button", has_text="Cancel").click()  # the confirmation is accepted
    expect(page.locator("#job-state")).to_have_text("finished", timeout=LIVE)
    expect(page.locator("#job-status")).to_have_text("cancelled")
    assert handle.wait(5).status == "cancelled"
