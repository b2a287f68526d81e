"""engine/protocol.py: messages survive the frame round trip; bad frames are reported, skipped."""

import dataclasses
import io
import subprocess
import sys

import numpy as np
import pytest

from engine import protocol as p
from tests.fakes import roundtrip

rng = np.random.default_rng(0)
IMAGE = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
MASK = rng.random((5, 7)) > 0.5

MESSAGES = [
    p.LoadModel("j1", "/models/uni", "cuda:1"),
    p.Understand(
        "j2",
        (p.ChatTurn("user", "what is this?", (IMAGE, IMAGE[:2])), p.ChatTurn("assistant", "a cat")),
        seed=3,
        mask=MASK,
    ),
    p.Generate("j3", "a red fox", 512, 768, 9, True, 12, 2.5),
    p.Edit("j4", IMAGE, "make it blue", MASK, 4, None, 1.5, None),
    p.Edit("j4b", IMAGE, "global"),
    p.Cancel("j3"),
    p.Unload("j5"),
    p.Status("j6"),
    p.Echo("j7", IMAGE, (4, 4, 3)),
    p.Shutdown(),
    p.Ready("", p.VERSION, 123),
    p.LoadProgress("j1", "backbone", 1, 9),
    p.Progress("j3", "tokens", 2, 8, IMAGE),
    p.Progress("j3", "tokens", 3, 8),
    p.TextDelta("j2", " ünïcode ✓"),
    p.ImageResult("j3", IMAGE, {"seed": "9", "prompt": "a red fox"}, "thought"),
    p.TextResult("j2", "a cat"),
    p.Finished("j3"),
    p.Failed("j4", "The image is unreadable.", "bad_input"),
    p.StatusReport("j6", "cuda:0", "3 GB", "backbone", "j3", {"device": "cuda:0"}),
]


def same(a, b) -> bool:
    if dataclasses.is_dataclass(a):
        return type(a) is type(b) and all(
            same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a)
        )
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, tuple | list):
        return isinstance(b, tuple) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message):
    back = roundtrip(message, p.REQUESTS + p.EVENTS)
    assert same(message, back)


def test_every_message_type_is_covered_and_has_a_job_id():
    assert {type(m) for m in MESSAGES} == set(p.REQUESTS + p.EVENTS)
    for cls in p.REQUESTS + p.EVENTS:
        assert dataclasses.fields(cls)[0].name == "job_id"
        assert cls.__dataclass_params__.frozen


def test_arrays_cross_raw_and_come_back_writable():
    big = np.zeros((1024, 1024, 3), np.uint8)
    parts = p.encode(p.ImageResult("j", big, {}))
    assert sum(len(part) for part in parts) < big.nbytes + 300  # no PNG, no base64
    back = roundtrip(p.ImageResult("j", IMAGE, {}), p.EVENTS)
    back.image[0, 0, 0] = 1  # the receiver may paint on it


def test_non_contiguous_and_empty_arrays():
    view = IMAGE[:, ::2]
    assert np.array_equal(roundtrip(p.Edit("j", view, "x"), p.REQUESTS).image, view)
    empty = np.zeros((0, 4, 3), np.uint8)
    assert roundtrip(p.Edit("j", empty, "x"), p.REQUESTS).image.shape == (0, 4, 3)


def test_unsendable_values_are_refused_at_the_sender():
    with pytest.raises(TypeError, match="object"):
        p.encode(p.Edit("j", np.array([object()]), "x"))
    with pytest.raises(TypeError, match="set"):
        p.encode(p.Generate("j", {"not", "a", "str"}))


def _frames(*messages) -> bytes:
    return b"".join(b"".join(p.encode(m)) for m in messages)


def _header_frame(header: bytes, payload: bytes = b"") -> bytes:
    return p.MAGIC + len(header).to_bytes(4, "little") + header + payload


def read_all(data: bytes, accept=p.REQUESTS) -> list:
    return list(p.FrameReader(io.BytesIO(data), accept))


def test_garbage_before_a_frame_is_reported_then_skipped():
    out = read_all(b"hello, not a frame" + _frames(p.Status("a"), p.Status("b")))
    assert isinstance(out[0], p.ProtocolError)
    assert [m.job_id for m in out[1:]] == ["a", "b"]


def test_unreadable_header_is_reported_then_skipped():
    out = read_all(_header_frame(b"{not json") + _frames(p.Status("a")))
    assert isinstance(out[0], p.ProtocolError) and "not readable" in str(out[0])
    assert [m.job_id for m in out[1:]] == ["a"]


def test_unknown_request_is_reported_with_its_job_id_and_stream_stays_in_sync():
    bogus = b'{"type":"Bogus","data":{"job_id":"x9"},"arrays":[["uint8",[2,2]]]}'
    out = read_all(_header_frame(bogus, b"\x00" * 4) + _frames(p.Status("a")))
    assert isinstance(out[0], p.ProtocolError) and out[0].in_sync and out[0].job_id == "x9"
    assert "Bogus" in str(out[0])
    assert out[1] == p.Status("a")


def test_an_event_sent_as_a_request_is_refused():
    out = read_all(_frames(p.Finished("f"), p.Status("a")))
    assert isinstance(out[0], p.ProtocolError) and out[0].job_id == "f"
    assert out[1] == p.Status("a")


def test_wrong_fields_are_reported():
    bad = b'{"type":"Generate","data":{"job_id":"g","colour":"red"},"arrays":[]}'
    out = read_all(_header_frame(bad) + _frames(p.Status("a")))
    assert isinstance(out[0], p.ProtocolError) and out[0].job_id == "g"
    assert out[1] == p.Status("a")


def test_forbidden_dtype_and_huge_arrays_are_refused():
    obj = b'{"type":"Edit","data":{"job_id":"e"},"arrays":[["object",[1]]]}'
    huge = b'{"type":"Edit","data":{"job_id":"h"},"arrays":[["uint8",[100000,100000,3]]]}'
    out = read_all(_header_frame(obj) + _header_frame(huge) + _frames(p.Status("a")))
    assert [type(m) for m in out] == [p.ProtocolError, p.ProtocolError, p.Status]
    assert out[1].job_id == "h"


def test_truncated_stream_ends_cleanly():
    data = _frames(p.Status("a"), p.Edit("e", IMAGE, "x"))
    assert read_all(data[:-5]) == [p.Status("a")]


def test_importing_protocol_pulls_no_torch_and_no_qt():
    code = "import sys, engine.protocol; print('torch' in sys.modules, 'PySide6' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
