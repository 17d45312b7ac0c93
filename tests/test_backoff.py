from geventsched.backoff import Backoff


def test_backoff_doubles_up_to_its_cap():
    backoff = Backoff(first=0.1, cap=0.5)
    assert [backoff.next() for _ in range(5)] == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_backoff_delay_is_the_coming_wait_and_reset_starts_over():
    backoff = Backoff(first=1.0, cap=8.0, factor=3.0)
    backoff.next()
    assert backoff.delay == 3.0
    assert backoff.delay == 3.0  # reading it does not advance
    backoff.reset()
    assert backoff.next() == 1.0
