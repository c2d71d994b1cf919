"""Extraction: the pipeline's own function and the process pool around it."""

from __future__ import annotations

import os
import signal
import time

import pytest
from builders import article_page, make_story

from tasks import extract as ex
from tasks.extract import ExtractJob, ExtractorPool, clean_text, extract_article, extract_batch


def test_extracts_text_and_metadata_and_leaves_the_chrome_out():
    story = make_story(3)
    got = extract_article(ExtractJob(key="k", url="http://news.example/a.html", body=article_page(story)))
    assert got.error is None and got.key == "k"
    assert all(p in got.text for p in story.paragraphs)
    assert "We use cookies" not in got.text and "Related: Unrelated" not in got.text
    assert got.author == story.author and got.language == "en" and got.sitename == "Test Gazette"
    assert got.date == story.published.date().isoformat()


def test_no_text_is_an_error_not_an_exception():
    got = extract_article(ExtractJob(key="x", url="http://n.example/", body=b"\x00\xff\xfe binary"))
    assert got.text is None and got.error


def test_http_charset_is_used_when_the_page_declares_none():
    body = "<html><body><article><p>" + "Zürich Straße größer " * 30 + "</p></article></body></html>"
    got = extract_article(
        ExtractJob(
            key="c",
            url="http://n.example/",
            body=body.encode("latin-1"),
            content_type="text/html; charset=ISO-8859-1",
        )
    )
    assert "Zürich Straße größer" in got.text


def test_clean_text_drops_share_bars_and_closing_newsletter_promos_only():
    text = "\n".join(
        [
            "Share via: Facebook · X · WhatsApp · Email ·",
            "The minister said the newsletter of the ministry would be discontinued next year, in a long sentence.",
            "Daily newsletter",
            "Never miss a story. Sign up for our free daily newsletter.",
            "You can unsubscribe at any time.",
        ]
    )
    assert clean_text(text) == (
        "The minister said the newsletter of the ministry would be discontinued next year, in a long sentence."
    )


def _crash_on_poison(job: ExtractJob):
    if job.key == "poison":
        os.kill(os.getpid(), signal.SIGKILL)
    return extract_article(job)


def test_pool_gives_the_same_results_and_survives_a_worker_dying(monkeypatch):
    jobs = [
        ExtractJob(key=str(i), url=f"http://n.example/{i}", body=article_page(make_story(i)))
        for i in range(6)
    ]
    serial = extract_batch(jobs)
    with ExtractorPool(2) as pool:
        assert pool.map(jobs) == serial
        # A worker killed mid-batch: the other pages are still extracted, the culprit is marked.
        monkeypatch.setattr(ex, "extract_article", _crash_on_poison)
        poisoned = (
            jobs[:3] + [ExtractJob(key="poison", url="http://n.example/p", body=b"<html></html>")] + jobs[3:]
        )
        got = pool.map(poisoned)
    assert [g.key for g in got] == [j.key for j in poisoned]
    assert got[3].text is None and "died" in got[3].error
    assert [g for g in got if g.key != "poison"] == serial


def _stuck_on_slow(job):
    if job.key.startswith("slow"):
        time.sleep(120)  # a page trafilatura would take minutes on
    return extract_article(job)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_page_over_the_time_limit_is_given_up_and_the_batch_goes_on(monkeypatch, workers):
    jobs = [
        ExtractJob(key=str(i), url=f"http://n.example/{i}", body=article_page(make_story(i)))
        for i in range(4)
    ]
    serial = extract_batch(jobs)
    monkeypatch.setattr(ex, "extract_article", _stuck_on_slow)
    stuck = jobs[:2] + [ExtractJob(key="slow", url="http://n.example/s", body=b"<html></html>")] + jobs[2:]
    with ExtractorPool(workers, timeout=2) as pool:
        pool.map(jobs[:1])  # workers up and warm: the clock below measures the limit, not start-up
        started = time.monotonic()
        got = pool.map(stuck)
        took = time.monotonic() - started
        again = pool.map(jobs)  # the pool works on after killing a worker
    assert [g.key for g in got] == [j.key for j in stuck]
    assert got[2].text is None and "longer than 2 s" in got[2].error
    assert [g for g in got if g.key != "slow"] == serial and again == serial
    assert took < 2 * 2 + 15  # at most two limits (a whole-batch stall, then the page alone) + restarts


def test_workers_do_not_outlive_a_killed_parent(tmp_path):
    """A poll killed with SIGKILL must not leave its extraction workers behind."""
    import subprocess
    import sys
    import time

    script = (
        "import os, sys, time\n"
        "from tasks.extract import ExtractorPool\n"
        "with ExtractorPool(2) as pool:\n"
        "    pool.map([])\n"
        "    time.sleep(3)\n"  # the workers are up and warm by now
        "    print(' '.join(str(p) for p in pool._executor._processes), flush=True)\n"
        "    time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in parent.stdout.readline().split()]
    assert len(workers) == 2
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 10
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [w for w in alive if _alive(w)]
    assert alive == []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False
