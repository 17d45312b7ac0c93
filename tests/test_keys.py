import pytest

from geventsched.keys import Keys

OWN = {
    "wakeup_channel": "geventsched:wakeup", "seq": "geventsched:seq", "jobs": "geventsched:jobs",
    "intake": "geventsched:intake", "inflight": "geventsched:inflight", "attempts": "geventsched:attempts",
    "dead": "geventsched:dead", "result_prefix": "geventsched:result:", "finished": "geventsched:finished",
    "workers": "geventsched:workers", "worker_prefix": "geventsched:worker:", "channels": "geventsched:channels",
    "master": "geventsched:master", "result_channel": "CHANNEL_RESULT",
}


@pytest.mark.parametrize("namespace, prefix", [("", ""), ("NS", "NS:"), ("team:prod", "team:prod:")])
def test_every_key_and_channel_carries_the_namespace(namespace, prefix):
    keys = Keys(namespace)
    assert {attr: getattr(keys, attr) for attr in OWN} == {attr: prefix + name for attr, name in OWN.items()}
    assert keys.result("42") == prefix + "geventsched:result:42"
    assert keys.worker("w-1") == prefix + "geventsched:worker:w-1"
    assert keys.reply_channel("ab12") == prefix + "geventsched:reply:ab12"
    assert keys.dispatch_channel("3") == prefix + "CHANNEL_DISPATCH_3"
    assert keys.dispatch_channel("gpu") == prefix + "gpu"


def test_dispatch_channel_names():
    keys = Keys()
    assert keys.dispatch_channel("3") == "CHANNEL_DISPATCH_3"
    assert keys.dispatch_channel(12) == "CHANNEL_DISPATCH_12"
    assert keys.dispatch_channel("CHANNEL_DISPATCH_3") == "CHANNEL_DISPATCH_3"
    assert keys.dispatch_channel("gpu-1") == "gpu-1"
    assert Keys("NS").dispatch_channel("3") == "NS:CHANNEL_DISPATCH_3"


def test_result_channel_is_the_original_name():
    assert Keys().result_channel == "CHANNEL_RESULT"
    assert Keys("NS").result_channel == "NS:CHANNEL_RESULT"


def test_namespaces_do_not_share_names():
    def names(keys):
        return {getattr(keys, attr) for attr in OWN} | {keys.dispatch_channel("1"), keys.reply_channel("c")}

    assert len(names(Keys("a"))) == len(OWN) + 2
    assert not names(Keys("a")) & names(Keys("b")) and not names(Keys("a")) & names(Keys(""))


def test_delete_namespace_removes_its_keys_and_no_others(r, namespace):
    from geventsched.store import Store

    keys = Keys(namespace)
    r.set(keys.jobs, "x")
    r.set(keys.result("1"), "x")
    r.set(f"{namespace}-other:geventsched:jobs", "kept")
    try:
        Store(r, keys).delete_namespace()
        assert not r.exists(keys.jobs, keys.result("1"))
        assert r.get(f"{namespace}-other:geventsched:jobs") == b"kept"
        with pytest.raises(ValueError):
            Store(r, Keys("")).delete_namespace()
    finally:
        r.delete(f"{namespace}-other:geventsched:jobs")
