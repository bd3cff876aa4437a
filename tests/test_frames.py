"""Browser frames: what conferences/frames.py accepts and what it refuses, as a table of cases."""

import json

import pytest

from conferences import frames


@pytest.mark.parametrize(
    "text,error",
    [
        ("not json", "not JSON"),
        ("", "not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('"text"', "expected a JSON object"),
        ("null", "expected a JSON object"),
        ("[" * 2048 + "]" * 2048, "message too deeply nested"),  # RecursionError in json.loads
        ('{"a":' * 500 + "1" + "}" * 500, "message too deeply nested"),
        ('{"a": [[[[[1]]]]], "request_id": 1}', "message too deeply nested"),
        ('{"action": "resync", "request_id": NaN}', "not JSON"),
        ('{"action": "resync", "request_id": 1, "x": Infinity}', "not JSON"),
        ('{"action": "resync", "request_id": 1, "x": -Infinity}', "not JSON"),
        ('{"action": "resync", "request_id": 1, "x": 1e400}', "number out of range"),
        ('{"action": "resync", "request_id": 1' + "0" * 5000 + "}", "message too large"),
        ('{"action": "resync", "request_id": "x", "pad": "' + "é" * 2100 + '"}', "message too large"),
        ('{"action": "mute"}', "request_id missing or invalid"),
        ('{"action": "mute", "request_id": true}', "request_id missing or invalid"),
        ('{"action": "mute", "request_id": null}', "request_id missing or invalid"),
        ('{"action": "mute", "request_id": 1.5}', "request_id missing or invalid"),
        ('{"action": "mute", "request_id": {"a": 1}}', "request_id missing or invalid"),
        ('{"action": "mute", "request_id": [1]}', "request_id missing or invalid"),
        ('{"action": "mute", "request_id": "\\ud800"}', "request_id missing or invalid"),  # lone surrogate
        ('{"action": "mute", "request_id": "a\\udfff"}', "request_id missing or invalid"),
        ('{"action": "mute", "request_id": ' + "9" * 400 + "}", "request_id missing or invalid"),
        ('{"action": "mute", "request_id": 9007199254740992}', "request_id missing or invalid"),
        (json.dumps({"action": "mute", "request_id": "x" * 65}), "request_id missing or invalid"),
        ("\ufeff{}", "not JSON"),
        ("{}\x00", "not JSON"),
    ],
)
def test_frames_that_cannot_be_understood_get_a_clear_error(text, error):
    with pytest.raises(frames.FrameError) as raised:
        frames.parse_request(text)
    assert str(raised.value) == error


@pytest.mark.parametrize(
    "text,action,request_id,participant",
    [
        ('{"action": "resync", "request_id": "r1"}', "resync", "r1", None),
        ('{"action": "mute", "request_id": 7, "participant": 42}', "mute", 7, 42),
        ('{"action": "mute", "request_id": -7, "participant": 42}', "mute", -7, 42),
        ('{"action": "mute", "request_id": "", "participant": 42}', "mute", "", 42),
        ('{"action": "mute", "request_id": "r", "participant": "42"}', "mute", "r", None),
        ('{"action": "mute", "request_id": "r", "participant": 42.0}', "mute", "r", None),
        ('{"action": "mute", "request_id": "r", "participant": true}', "mute", "r", None),
        ('{"action": "mute", "request_id": "r", "participant": 0}', "mute", "r", None),
        ('{"action": "mute", "request_id": "r", "participant": -1}', "mute", "r", None),
        ('{"action": "mute", "request_id": "r", "participant": 9223372036854775807}', "mute", "r", 2**63 - 1),
        ('{"action": "mute", "request_id": "r", "participant": 9223372036854775808}', "mute", "r", None),
        ('{"action": "mute", "request_id": "r", "participant": ' + "1" * 300 + "}", "mute", "r", None),
        ('{"action": "\\ud800", "request_id": "r"}', None, "r", None),
        ('{"action": 5, "request_id": "r"}', None, "r", None),
        ('{"action": "x", "action": "lock", "request_id": "r"}', "lock", "r", None),  # the last key wins
        ('{"request_id": "\\u202e\\u0000"}', None, "\u202e\u0000", None),
        ('{"action": "resync", "request_id": "%s"}' % ("я" * 64), "resync", "я" * 64, None),
    ],
)
def test_understood_frames_give_checked_fields(text, action, request_id, participant):
    request = frames.parse_request(text)
    assert (request.action, request.request_id, request.participant) == (action, request_id, participant)
    # Whatever is echoed back can be encoded (and so sent through the channel layer).
    json.dumps(request.request_id, ensure_ascii=False).encode("utf-8")


def test_nesting_depth_ignores_brackets_in_strings():
    assert frames.nesting_depth('{"a": "[[[[[[[[", "b": "\\"[[[["}') == 1
    assert frames.nesting_depth('[{"a": [1]}]') == 3
    assert frames.nesting_depth("") == 0
