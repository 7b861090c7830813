"""A batch's input file parsed (gateway/batches/lines.py): its requests in order, blank lines skipped, and every
kind of wrong line named by its line number; the error list bounded."""

from __future__ import annotations

import json

import orjson

from switchboard.gateway.batches import lines as ln

URL = "/v1/chat/completions"


def _line(custom_id: str, **over) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": URL, "body": {"model": "m", "messages": []}, **over})


def test_requests_come_in_order_with_their_bodies_and_blank_lines_are_skipped():
    content = f"\ufeff{_line('a')}\n\n   \n{_line('b')}\r\n".encode()  # a byte-order mark, CRLF, blank lines
    requests, errors = ln.parse_input(content, URL, 10)
    assert errors == [] and [(r.line, r.custom_id) for r in requests] == [(0, "a"), (1, "b")]
    assert orjson.loads(requests[0].body) == {"model": "m", "messages": []}


def test_each_wrong_line_is_named_by_its_number():
    content = "\n".join([
        _line("a"), _line("a"), "[1]", "{", _line(""), _line("c", method="GET"), _line("d", url="/v1/embeddings"),
        _line("e", body=[1]), _line("f", body={"stream": True}), _line("g", extra=1),
    ]).encode()
    requests, errors = ln.parse_input(content, URL, 10)
    assert [r.custom_id for r in requests] == ["a"]
    assert [(e.code, e.line) for e in errors] == [
        ("duplicate_custom_id", 2), ("invalid_json_line", 3), ("invalid_json_line", 4), ("missing_required_parameter", 5),
        ("invalid_method", 6), ("mismatched_endpoint", 7), ("invalid_body", 8), ("invalid_body", 9), ("invalid_json_line", 10)]
    assert errors[0].as_object() == {"code": "duplicate_custom_id", "message": errors[0].message, "param": "custom_id", "line": 2}


def test_a_file_that_is_empty_not_text_or_too_long_is_refused_whole():
    assert [e.code for e in ln.parse_input(b"\n \n", URL, 10)[1]] == ["empty_file"]
    assert [e.code for e in ln.parse_input(b"\xff\xfe", URL, 10)[1]] == ["invalid_file"]
    content = "\n".join(_line(str(i)) for i in range(4)).encode()
    assert [e.code for e in ln.parse_input(content, URL, 3)[1]] == ["too_many_requests"]


def test_the_errors_reported_are_bounded():
    content = b"{\n" * (ln.MAX_ERRORS + 50)
    assert len(ln.parse_input(content, URL, 10)[1]) == ln.MAX_ERRORS


def test_output_lines_are_openais_shape():
    answered = ln.answered_line("a", 200, "chatcmpl-1", {"ok": True})
    assert answered["id"].startswith("batch_req_") and answered["response"] == {"status_code": 200, "request_id": "chatcmpl-1", "body": {"ok": True}}
    assert answered["error"] is None
    failed = ln.failed_line("b", "batch_expired", "too late")
    assert failed["response"] is None and failed["error"] == {"code": "batch_expired", "message": "too late"}
