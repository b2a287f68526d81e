"""RemoteBackend against the local test double (tests/remote/double.py) and the upstream contract:
each task end to end, the failure sentences, and the request and parsing contract."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.remote import (
    CANCELLED,
    RemoteBackend,
    RemoteOptions,
    edit_body,
    error_for_status,
    generate_body,
    parse_image_response,
    parse_sse_line,
    plain_http_warning,
    png_bytes,
    split_urls,
    understand_body,
)
from engine import masking
from engine.errors import BadInput
from engine.protocol import (
    TERMINAL,
    ChatTurn,
    Edit,
    Failed,
    Generate,
    ImageResult,
    LoadModel,
    Ready,
    TextDelta,
    TextResult,
    Understand,
)
from tests.remote.double import DoubleServer, png_b64, read_data_url, seeded_image

CONTRACT = json.loads((Path(__file__).parent / "contract.json").read_text())
PHOTO = np.random.default_rng(5).integers(0, 256, (96, 128, 3), dtype=np.uint8)


def backend_for(*servers, **options) -> RemoteBackend:
    options.setdefault("read_timeout_s", 10.0)
    options.setdefault("probe_interval_s", 0.1)
    return RemoteBackend(RemoteOptions([s.url for s in servers], **options))


async def job(backend: RemoteBackend, request, timeout: float = 20.0) -> list:
    """Submit `request` and collect its events up to its Finished or Failed."""
    backend.submit(request)
    events = []
    while True:
        event = await asyncio.wait_for(backend.receive(), timeout)
        if event.job_id == request.job_id:
            events.append(event)
            if isinstance(event, TERMINAL):
                return events


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


def result(events, kind=ImageResult):
    found = [e for e in events if isinstance(e, kind)]
    assert found, events
    return found[0]


def failure(events) -> str:
    assert isinstance(events[-1], Failed), events
    return events[-1].message


# ------------------------------------------------------------------ contract


def contract_png() -> str:
    return png_b64(seeded_image(1, 8, 8))


def with_png(value):
    return json.loads(json.dumps(value).replace("<base64 PNG>", contract_png()))


def shape(value):
    """Keys and value types, recursively: what the server's schema checks."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(v) for v in value[:1]]
    return type(value).__name__


def test_our_t2i_request_has_the_documented_shape():
    ours = generate_body(
        Generate("j", "A sailboat on a calm lake.", seed=42, steps=8, cfg_scale=4.0)
    )
    upstream = CONTRACT["t2i_request"]
    assert shape({k: ours[k] for k in upstream}) == shape(upstream)
    assert ours["image_generation"] == upstream["image_generation"]


def test_our_thinking_request_asks_for_the_text_and_the_image():
    ours = generate_body(Generate("j", "A sailboat", thinking=True))
    changes = CONTRACT["thinking_request_changes"]
    assert ours["modalities"] == changes["modalities"]
    assert ours["image_generation"]["mode"] == "thinking" and ours["stream"] is False
    assert ours["image_generation"]["cfg_scale"] == 2.0  # always explicit: the server's is off


def test_our_edit_request_has_the_documented_shape_and_a_data_url():
    request = Edit("j", PHOTO, "Change the background to a beach.", seed=42, steps=8)
    ours = edit_body(PHOTO, request)
    upstream = with_png(CONTRACT["edit_request"])
    assert shape({k: ours[k] for k in upstream}) == shape(upstream)
    assert ours["seed"] == 42  # the documented top-level (thinker) seed too
    assert ours["image_generation"] == upstream["image_generation"]
    url = ours["messages"][0]["content"][0]["image_url"]["url"]
    assert np.array_equal(read_data_url(url), PHOTO)


def test_our_understanding_request_streams_multi_turn_with_images():
    turns = (
        ChatTurn("user", "What is this?", (PHOTO,)),
        ChatTurn("assistant", "A car."),
        ChatTurn("user", "Describe this image in detail."),
    )
    ours = understand_body(Understand("j", turns, max_tokens=1024))
    upstream = with_png(CONTRACT["understand_request"])
    assert shape(ours["messages"][0]) == shape(upstream["messages"][0])
    assert [m["role"] for m in ours["messages"]] == ["user", "assistant", "user"]
    assert ours["stream"] is True and ours["modalities"] == ["text"]
    assert ours["max_tokens"] == 1024


def test_documented_responses_parse():
    image, thinking = parse_image_response(with_png(CONTRACT["image_response"]))
    assert np.array_equal(image, seeded_image(1, 8, 8)) and thinking is None
    for name in ("thinking_response_message", "t2i_variant_response_message"):
        response = {"choices": [{"message": with_png(CONTRACT[name])}]}
        image, thinking = parse_image_response(response)
        assert image.shape == (8, 8, 3)
    assert thinking is None
    text, lines = "", CONTRACT["sse_lines"]
    for line in lines:
        piece = parse_sse_line(line)
        if piece is None:
            break
        text += piece
    assert text == CONTRACT["sse_text"]


def test_documented_errors_get_one_sentence_each():
    for case in CONTRACT["errors"]:
        error = error_for_status(case["status"], json.dumps(case["body"]).encode(), "http://h:1")
        message = str(error)
        assert case["sentence_contains"] in message, (case, message)
        assert message.endswith(".") and "\n" not in message and "{" not in message


def test_settings_the_server_does_not_take_are_refused_before_the_job():
    with pytest.raises(BadInput, match="block length"):
        generate_body(Generate("j", "x", block_length=16))
    with pytest.raises(BadInput, match="top-p"):
        understand_body(Understand("j", (ChatTurn("user", "hi"),), top_p=0.5))
    official = Generate("j", "x", block_length=32, thinking_length=4096, use_cache=True)
    assert generate_body(official)["image_generation"]["mode"] == "normal"  # the server's own
    assert understand_body(Understand("j", (ChatTurn("user", "hi"),), steps=32))["stream"]


# ------------------------------------------------------------------ each task end to end


def test_generate_and_thinking_generate_end_to_end():
    async def body(server):
        backend = backend_for(server)
        assert isinstance(await backend.receive(), Ready)
        plain = result(await job(backend, Generate("g1", "a boat", 64, 32, seed=7)))
        assert np.array_equal(plain.image, seeded_image(7, 64, 32))
        assert plain.metadata["server"] == server.url and plain.metadata["seed"] == "7"
        assert plain.metadata["decoder"] == "turbo" and plain.metadata["decoder_steps"] == "8"
        assert plain.metadata["cfg_scale"] == "2.0" and plain.metadata["width"] == "64"
        events = await job(backend, Generate("g2", "a lake", 32, 32, seed=3, thinking=True))
        thought = result(events)
        assert thought.thinking == "Thinking about 'a lake'."
        assert [e.text for e in events if isinstance(e, TextDelta)] == [thought.thinking]
        sent = server.requests[-1]["image_generation"]
        assert sent["mode"] == "thinking" and (sent["image_w"], sent["image_h"]) == (32, 32)
        backend.close()

    with DoubleServer() as server:
        run(body(server))


def test_global_edit_end_to_end():
    async def body(server):
        backend = backend_for(server)
        edited = result(await job(backend, Edit("e", PHOTO, "invert it", seed=1)))
        assert np.array_equal(edited.image, (255 - PHOTO).repeat(2, 0).repeat(2, 1))
        assert edited.metadata["task"] == "edit"
        backend.close()

    with DoubleServer() as server:
        run(body(server))


def test_masked_edit_keeps_every_pixel_outside_the_feathered_mask():
    photo = np.random.default_rng(9).integers(0, 256, (400, 520, 3), dtype=np.uint8)
    mask = np.zeros(photo.shape[:2], dtype=bool)
    mask[150:230, 200:300] = True

    async def body(server):
        backend = backend_for(server)
        edited = result(await job(backend, Edit("m", photo, "invert it", mask=mask, seed=2)))
        backend.close()
        return edited

    with DoubleServer() as server:
        edited = run(body(server))
        sent = read_data_url(server.requests[-1]["messages"][0]["content"][0]["image_url"]["url"])
    plan = masking.plan_edit(photo.shape[:2], mask)
    assert sent.shape[1::-1] == plan.bucket  # only the crop crossed the network
    alpha = masking.feathered_alpha(mask, plan)
    outside = alpha == 0
    assert edited.image.shape == photo.shape
    assert np.array_equal(edited.image[outside], photo[outside])  # byte-identical
    assert not np.array_equal(edited.image[mask], photo[mask])  # the mask was repainted
    assert "composited locally" in edited.metadata["masked"]


def test_multi_turn_answer_streams_as_text_deltas():
    turns = (
        ChatTurn("user", "What is this?", (PHOTO,)),
        ChatTurn("assistant", "A car."),
        ChatTurn("user", "What colour is it?"),
    )

    async def body(server):
        backend = backend_for(server)
        events = await job(backend, Understand("a", turns))
        backend.close()
        return events

    with DoubleServer() as server:
        events = run(body(server))
    deltas = [e.text for e in events if isinstance(e, TextDelta)]
    whole = result(events, TextResult).text
    assert len(deltas) > 3 and "".join(deltas) == whole
    assert whole == "3 turns, 1 images: you asked What colour is it?"


# ------------------------------------------------------------------ failures


def test_a_busy_server_that_recovers_runs_the_job_and_a_long_busy_one_gets_its_sentence():
    async def body(server):
        backend = backend_for(server)
        recovered = await job(backend, Generate("r", "x", 32, 32, seed=1))
        assert isinstance(result(recovered), ImageResult)
        assert len(server.requests) == 2  # the 503, then the same seeded request again
        server.busy_times = 5
        message = failure(await job(backend, Generate("b", "x", 32, 32, seed=1)))
        assert "busy" in message
        server.busy_times = 0
        await asyncio.sleep(0.15)  # the probe interval: the server is asked again
        assert isinstance(result(await job(backend, Generate("c", "x", 32, 32))), ImageResult)
        backend.close()

    with DoubleServer(busy_times=1) as server:
        run(body(server))


def test_a_hanging_server_times_out_with_a_sentence_and_no_retry():
    async def body(server):
        backend = backend_for(server, read_timeout_s=0.3)
        message = failure(await job(backend, Generate("h", "x", 32, 32)))
        backend.close()
        return message

    with DoubleServer(hang_s=2.0) as server:
        message = run(body(server))
        assert len(server.requests) == 1  # never sent twice after a timeout
    assert "sent nothing for 0.3 s" in message and "may still be working" in message


def test_a_text_only_server_says_so_at_the_probe_and_refuses_before_sending():
    async def body(server):
        backend = backend_for(server)
        caps = (await backend.pool.probe_all())[0]
        assert "no image generation" in caps.summary()
        message = failure(await job(backend, Generate("t", "x", 32, 32)))
        answer = await job(backend, Understand("u", (ChatTurn("user", "hi"),)))
        backend.close()
        return message, answer

    with DoubleServer(images=False) as server:
        message, answer = run(body(server))
        assert len(server.requests) == 1  # the question; the image job never left
        assert "image_generation" not in server.requests[0]  # only the question was sent
    assert "understanding only" in message and "cannot generate" in message
    assert isinstance(result(answer, TextResult), TextResult)


def test_a_bad_key_gets_its_sentence_and_the_key_is_never_logged(caplog):
    caplog.set_level(logging.DEBUG)

    async def body(server, key):
        backend = backend_for(server, key=key)
        events = await job(backend, Generate("k", "x", 32, 32))
        backend.close()
        return events

    with DoubleServer(key="right-key") as server:
        message = failure(run(body(server, "wrong-key")))
        good = result(run(body(server, "right-key")))
        assert server.headers_seen[-1]["Authorization"] == "Bearer right-key"
    assert "refused the API key (401)" in message
    assert "key" not in json.dumps(good.metadata).lower().replace("api key", "")
    assert "right-key" not in json.dumps(good.metadata) and "right-key" not in caplog.text
    assert "wrong-key" not in caplog.text and "wrong-key" not in message


def test_a_refused_connection_gets_its_sentence_at_once():
    with DoubleServer() as server:
        url = server.url
    backend_options = RemoteOptions([url], read_timeout_s=5.0)

    async def body():
        backend = RemoteBackend(backend_options)
        events = await job(backend, LoadModel("l", ""))
        backend.close()
        return events

    assert "Could not connect" in failure(run(body()))


def test_cancel_is_honest_and_the_late_result_is_discarded():
    async def body(server):
        backend = backend_for(server)
        backend.submit(Generate("slow", "x", 32, 32))
        await asyncio.sleep(0.2)
        backend.cancel("slow")
        ended = await asyncio.wait_for(backend.receive(), 5)
        while ended.job_id != "slow" or not isinstance(ended, TERMINAL):
            ended = await asyncio.wait_for(backend.receive(), 5)
        await asyncio.sleep(0.6)  # the server finishes; nothing more arrives for the job
        assert backend._events.empty()
        backend.close()
        return ended

    with DoubleServer(delay_s=0.5) as server:
        ended = run(body(server))
    assert ended.code == "cancelled" and ended.message == CANCELLED


def test_addresses_and_plain_http_warnings():
    assert split_urls("http://a:1, https://b:2/\nhttp://c:3") == [
        "http://a:1",
        "https://b:2",
        "http://c:3",
    ]
    with pytest.raises(BadInput, match="key field"):
        split_urls("https://user:secret@host:1")
    with pytest.raises(BadInput, match="not a server address"):
        split_urls("host:8000")
    assert "plain HTTP" in plain_http_warning("http://10.0.0.5:8000")
    assert plain_http_warning("http://127.0.0.1:8000") == ""
    assert plain_http_warning("http://localhost:8000") == ""
    assert plain_http_warning("https://gpu.example.org") == ""


def test_the_remote_side_loads_no_torch():
    code = (
        "import sys, app.remote, app.servers, app.backend, app.remote_cli, engine.masking;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'diffusers')))"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_request_images_are_lossless_pngs_pillow_reads():
    for image in (PHOTO, PHOTO[:1, :1], np.zeros((3, 700, 3), dtype=np.uint8)):
        with Image.open(io.BytesIO(png_bytes(image))) as decoded:
            assert decoded.format == "PNG" and np.array_equal(np.asarray(decoded), image)


@pytest.fixture
def certificate(tmp_path):
    """A self-signed certificate for 127.0.0.1 (its own CA file)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"]
    command += ["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    command += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)]
    try:
        subprocess.run(command, check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl cannot make a test certificate here")
    return cert, key


def test_https_checks_the_certificate_and_takes_a_ca_file(certificate):
    async def body(server, ca_file):
        backend = backend_for(server, ca_file=ca_file)
        events = await job(backend, Generate("s", "x", 32, 32, seed=2))
        backend.close()
        return events

    with DoubleServer(tls=certificate) as server:
        assert server.url.startswith("https://")
        refused = failure(run(body(server, "")))
        trusted = result(run(body(server, str(certificate[0]))))
    assert refused.startswith("The certificate of 127.0.0.1:") and "CA file" in refused
    assert np.array_equal(trusted.image, seeded_image(2, 32, 32))
