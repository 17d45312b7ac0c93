"""The announcements a client keeps for waits to come (``heard.Heard``), shared by both clients."""

from geventsched import heard
from geventsched.protocol import Result


def result(job_id, value="heard"):
    return Result(job_id, "ok", value)


def test_a_signed_announcement_is_never_replaced_by_an_unsigned_one():
    kept = heard.Heard()
    kept.keep([result("a", "signed")], True)
    kept.keep([result("a", "forged"), result("b", "unsigned")], False)
    kept.keep([result("b", "signed")], True)  # an unsigned one is
    assert kept.pop("a") == (result("a", "signed"), True)
    assert kept.take({"b", "c"}) == [(result("b", "signed"), True)]
    assert kept.pop("a") == (None, False) and kept.take({"b"}) == []


def test_dropping_the_oldest_past_the_limit_or_listening_again_starts_a_new_epoch(monkeypatch):
    monkeypatch.setattr(heard, "HEARD_LIMIT", 2)
    kept = heard.Heard()
    kept.keep([result("a"), result("b")], True)
    assert kept.epoch == 0
    kept.keep([result("c")], True)
    assert kept.epoch == 1  # "a" went unheard as far as a wait for it can tell
    assert kept.take({"a", "b", "c"}) == [(result("b"), True), (result("c"), True)]
    kept.listening()
    assert kept.epoch == 2
