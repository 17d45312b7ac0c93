import json

import pytest

from geventsched.errors import DecodeError
from geventsched.protocol import JsonCodec, Job, RawCodec, Result, make_codec

codec = JsonCodec()


def job_bytes(**fields):
    return json.dumps({"v": 1, "id": "1", "task": "t", **fields}).encode()


def decode_error(data, decode=codec.decode_job):
    with pytest.raises(DecodeError) as info:
        decode(data)
    return info.value.reason


def test_json_job_round_trip_keeps_every_field():
    job = Job("42", "echo", ["h\u00e9llo \u2603 \U0001f600", {"a": [1, {"b": None}]}, 0.1, None, -3],
              {"k\u00fc": {"nested": [1.5e-300, True]}}, timeout=2.5, reply="ns:reply:x",
              submitted_at=1767225600.123, key="user-7")
    decoded = codec.decode_job(codec.encode_job(job))
    assert decoded == job
    assert decoded.args[2] == 0.1 and decoded.submitted_at == 1767225600.123


def test_json_job_defaults_survive_round_trip():
    job = Job("1", "noop")
    assert codec.decode_job(codec.encode_job(job)) == Job("1", "noop", [], {}, None, None, 0.0, None)


def test_json_result_round_trip_for_value_and_error():
    ok = Result("7", "ok", {"x": ["\u00e9", 1.25, None]}, task="echo")
    err = Result("8", "error", error={"type": "RuntimeError", "message": "boom", "traceback": "tb"},
                 task="fail")
    assert codec.decode_result(codec.encode_result(ok)) == ok
    assert codec.decode_result(codec.encode_result(err)) == err
    assert codec.decode_result(codec.encode_result(Result("9", "ok", 1, raw=True))).raw is True


@pytest.mark.parametrize("data, reason", [
    (b"", "empty"),
    (b'{"v":1,"id":"\xff","task":"t"}', "not_utf8"),
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "not_an_object"),
    (b'"text"', "not_an_object"),
    (b'{"id":"1","task":"t"}', "bad_version"),
    (b'{"v":2,"id":"1","task":"t"}', "bad_version"),
    (b'{"v":1,"task":"t"}', "missing_field"),
    (b'{"v":1,"id":"1"}', "missing_field"),
])
def test_decode_job_reports_reason(data, reason):
    assert decode_error(data) == reason


def test_decode_job_enforces_max_payload():
    small = JsonCodec(max_payload=len(job_bytes()))
    assert small.decode_job(job_bytes()).id == "1"
    assert decode_error(job_bytes(x=1), small.decode_job) == "too_large"


@pytest.mark.parametrize("fields", [
    {"id": 1}, {"id": ""}, {"task": ""}, {"task": None},
    {"timeout": 0}, {"timeout": -1}, {"timeout": "5"}, {"timeout": True}, {"timeout": 1e9},
    {"args": {"a": 1}}, {"args": "x"}, {"kwargs": [1]}, {"kwargs": None},
    {"key": 5}, {"reply": 3}, {"ts": "yesterday"}, {"ts": None},
])
def test_decode_job_rejects_bad_field(fields):
    assert decode_error(job_bytes(**fields)) == "bad_field"


@pytest.mark.parametrize("data, reason", [
    (b'{"v":1,"status":"ok"}', "missing_field"),
    (b'{"v":1,"id":"1"}', "missing_field"),
    (b'{"v":1,"id":"1","status":"weird"}', "bad_field"),
    (b'{"v":1,"id":1,"status":"ok"}', "bad_field"),
])
def test_decode_result_reports_reason(data, reason):
    assert decode_error(data, codec.decode_result) == reason


@pytest.mark.parametrize("text", ['"args":[NaN]', '"ts":Infinity', '"kwargs":{"a":-Infinity}'])
def test_decode_job_rejects_non_json_numbers_it_could_not_re_encode(text):
    # The encoder refuses NaN/Infinity (allow_nan=False), so the decoder must refuse them too.
    with pytest.raises(DecodeError):
        codec.decode_job(('{"v":1,"id":"1","task":"t",%s}' % text).encode())


@pytest.mark.parametrize("value, error", [
    (object(), TypeError), ({1, 2}, TypeError), (b"bytes", TypeError), (float("nan"), ValueError),
    (float("inf"), ValueError),
])
def test_encode_rejects_non_json_values(value, error):
    with pytest.raises(error):
        codec.encode_job(Job("1", "t", [value]))
    with pytest.raises(error):
        codec.encode_result(Result("1", "ok", value))
    with pytest.raises(error):  # a worker's answer, which takes the shorter way
        codec.encode_result(Result("1", "ok", value, token="tok", started=1.0, ended=2.0))


def test_a_workers_answer_encodes_as_any_result_does():
    for value in (None, 0, "x", [1.5, None], {"a": None}):
        result = Result("7", "ok", value, task="t", token="tok", started=1.5, ended=2.5)
        assert codec.decode_results(codec.encode_result(result))[0] == [result]


def test_raw_decode_job_uses_text_as_id_and_argument():
    job = RawCodec(task="echo").decode_job("caf\u00e9-1".encode())
    assert (job.id, job.task, job.args, job.kwargs) == ("caf\u00e9-1", "echo", ["caf\u00e9-1"], {})
    assert job.payload == "caf\u00e9-1".encode()


def test_raw_encode_result_echoes_original_payload():
    raw = RawCodec()
    job = raw.decode_job(b"job-9")
    assert raw.encode_result(Result("job-9", "ok", "anything else"), job) == b"job-9"
    assert raw.encode_result(Result("job-9", "error", error={"type": "X"})) == b"job-9"
    assert raw.encode_job(Job("17", "echo")) == b"17"


def test_raw_decode_result_is_ok_and_raw():
    assert RawCodec().decode_result(b"job-9") == Result("job-9", "ok", "job-9", raw=True)


@pytest.mark.parametrize("data, reason", [(b"", "empty"), (b"\xff\xfe\xfd", "not_utf8"), (b"x" * 9, "too_large")])
def test_raw_decode_job_reports_reason(data, reason):
    assert decode_error(data, RawCodec(max_payload=8).decode_job) == reason


def test_make_codec_by_name():
    assert isinstance(make_codec("json"), JsonCodec)
    raw = make_codec("raw", raw_task="noop", max_payload=5)
    assert isinstance(raw, RawCodec) and raw.task == "noop" and raw.max_payload == 5
    with pytest.raises(ValueError, match="unknown codec 'pickle'"):
        make_codec("pickle")
