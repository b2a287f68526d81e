"""The decoder stored int8 by `quantize --decoder-bits 8`: what the folder holds, that it loads
without re-quantizing and decodes bit-identically to quantizing on load, the error against the
unquantized decoder, cancel safety, the disk check, and damaged files."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from engine import quant, quantize_cmd, quantize_decoder
from engine.decoder import ImageDecoder, stored_quantized
from engine.errors import BadCheckpoint, BadInput, Cancelled

PARTS = ("decoder", "decoder-turbo")
# Relative error of one transformer forward, int8 linears against the stored (fp32) weights, on
# the tiny checkpoint: measured 0.0069 for both decoders; one real-width linear layer gives
# 0.0088 (tests/engine/test_quant.py LINEAR_BOUND).
FORWARD_BOUND = 0.012


@pytest.fixture(scope="module")
def int8_folder(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("quant_decoder") / "int8"
    seen = []
    quantize_cmd.quantize_folder(
        tiny_checkpoint, out, 8, decoder_bits=8, on_progress=lambda *a: seen.append(a)
    )
    total = seen[-1][1]
    assert seen[-1] == (total, total) and total == 3 + 2  # three shards, then each decoder
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    return out


def codes(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 16384, (2, 2), generator=torch.Generator().manual_seed(seed))


def test_folder_holds_int8_decoder_tensors_and_fewer_bytes(tiny_checkpoint, int8_folder):
    manifest = json.loads((int8_folder / "quantization.json").read_text())
    assert manifest["decoder"]["stored"] == "int8" and manifest["decoder"]["parts"] == list(PARTS)
    for part in PARTS:
        linears = quantize_decoder.linear_shapes(tiny_checkpoint / part)
        assert len(linears) > 20  # attention, feed-forward, modulation and final layers
        stored = int8_folder / part / "model.safetensors"
        with safe_open(stored, framework="pt") as file:
            names = set(file.keys())
            for weight, (n, k) in linears.items():
                base = weight.removesuffix(".weight")
                assert weight not in names
                qweight, scale = (
                    file.get_tensor(f"{base}.qweight"),
                    file.get_tensor(f"{base}.scale"),
                )
                assert qweight.dtype == torch.int8 and tuple(qweight.shape) == (n, k)
                assert scale.dtype == torch.bfloat16 and tuple(scale.shape) == (n,)
            assert "semantic_embedder.1.weight" in names  # the official name, kept as stored
            assert "x_pad_token" in names and "layers.0.attention_norm1.weight" in names
        source = tiny_checkpoint / part / "model.safetensors"
        assert stored.stat().st_size < 0.75 * source.stat().st_size
        assert (int8_folder / part / "config.json").samefile(tiny_checkpoint / part / "config.json")


@pytest.mark.parametrize("turbo", [True, False])
def test_stored_decoder_decodes_bit_identical_to_quantizing_on_load(
    tiny_checkpoint, int8_folder, monkeypatch, turbo
):
    on_load = ImageDecoder(tiny_checkpoint, turbo=turbo)
    quant.quantize_loaded(on_load.load_dit(), 8)
    expected = on_load.decode(codes(), seed=3, steps=2)
    streamed = ImageDecoder(tiny_checkpoint, turbo=turbo, dit_bits=8)  # bf16 folder, int8 plan
    assert np.array_equal(streamed.decode(codes(), seed=3, steps=2), expected)

    def no_quantizing(*args, **kwargs):
        raise AssertionError("a stored int8 decoder must not be quantized again")

    monkeypatch.setattr(quant, "quantize_int8", no_quantizing)
    stored = ImageDecoder(int8_folder, turbo=turbo)  # int8 because the folder stores it so
    assert np.array_equal(stored.decode(codes(), seed=3, steps=2), expected)
    assert isinstance(stored.dit.layers[0].feed_forward.w1, quant.QuantLinear)


def test_a_planned_int8_decoder_never_loads_whole_in_bf16(tiny_checkpoint, monkeypatch):
    def whole(*args, **kwargs):
        raise AssertionError("the bf16 transformer was read whole")

    monkeypatch.setattr("engine.decoder.read_safetensors", whole)
    dit = ImageDecoder(tiny_checkpoint, dit_bits=8).load_dit()
    assert isinstance(dit.layers[0].attention.to_q, quant.QuantLinear)


@pytest.mark.parametrize("turbo", [True, False])
def test_int8_forward_stays_within_bound_of_the_stored_weights(tiny_checkpoint, int8_folder, turbo):
    generator = torch.Generator().manual_seed(0)
    full = ImageDecoder(tiny_checkpoint, turbo=turbo)
    int8 = ImageDecoder(int8_folder, turbo=turbo)
    cap = full.load_sigvq()(codes())
    x, t = torch.randn(16, 1, 8, 8, generator=generator), torch.tensor([0.3])
    with torch.inference_mode():
        want = full.load_dit()([x], t, [cap], return_dict=False)[0][0]
        got = int8.load_dit()([x], t, [cap], return_dict=False)[0][0]
    error = ((got - want).norm() / want.norm()).item()
    assert 0 < error < FORWARD_BOUND


def test_pipeline_runs_on_the_stored_int8_decoder(int8_folder):
    from engine.pipeline import Pipeline

    pipeline = Pipeline.load(int8_folder, device="cpu")
    result = pipeline.generate("a red fox", width=256, height=256, steps=1, seed=1)
    assert result.image.shape == (256, 256, 3)
    assert "decoder int8" in pipeline.status()["precision"]
    assert isinstance(pipeline.decoder.dit.layers[0].attention.to_q, quant.QuantLinear)


def test_cancelled_while_storing_the_decoder_leaves_no_folder(tiny_checkpoint, tmp_path):
    out = tmp_path / "cancelled"

    def cancel_in_the_decoder(done, total):
        if done > 3:  # the three backbone shards are written
            raise Cancelled()

    with pytest.raises(Cancelled):
        quantize_cmd.quantize_folder(
            tiny_checkpoint, out, 8, decoder_bits=8, on_progress=cancel_in_the_decoder
        )
    assert list(tmp_path.iterdir()) == []


def test_stored_decoder_without_manifest_does_not_load_as_complete(int8_folder, tmp_path):
    """What a run killed before its manifest would leave."""
    partial = tmp_path / ".killed.partial"
    shutil.copytree(int8_folder, partial)
    (partial / "quantization.json").unlink()
    with pytest.raises(BadCheckpoint, match="unfinished quantized folder"):
        ImageDecoder(partial).load_dit()


def test_truncated_stored_decoder_gets_one_sentence(int8_folder, tmp_path):
    from engine.pipeline import Pipeline

    damaged = tmp_path / "damaged"
    shutil.copytree(int8_folder, damaged)
    weights = damaged / "decoder-turbo" / "model.safetensors"
    weights.unlink()  # a copy of its own, not the shared hard link
    shutil.copy(int8_folder / "decoder-turbo" / "model.safetensors", weights)
    with open(weights, "r+b") as file:
        file.truncate(weights.stat().st_size // 2)
    with pytest.raises(BadCheckpoint) as direct:
        ImageDecoder(damaged).load_dit()
    pipeline = Pipeline.load(damaged, device="cpu")
    with pytest.raises(BadCheckpoint) as loading:
        pipeline.generate("a red fox", width=256, height=256, steps=1, seed=1)
    for error in (direct.value, loading.value):
        sentence = str(error)
        assert "truncated" in sentence and "model.safetensors" in sentence
        assert "quantize the model again" in sentence  # quantize wrote it: not a download
        assert sentence.endswith(".") and sentence.count(". ") == 0 and "\n" not in sentence


def test_disk_check_counts_the_decoder(tiny_checkpoint, tmp_path, monkeypatch):
    from engine.checkpoint import tensor_index

    backbone_only = quantize_cmd.output_bytes(tensor_index(tiny_checkpoint), 8, 128)
    usage = shutil.disk_usage(tmp_path)._replace(free=backbone_only + quantize_cmd.MARGIN_BYTES)
    monkeypatch.setattr(quantize_cmd.shutil, "disk_usage", lambda path: usage)
    with pytest.raises(BadInput, match="free"):
        quantize_cmd.quantize_folder(tiny_checkpoint, tmp_path / "out", 8, decoder_bits=8)
    assert list(tmp_path.iterdir()) == []
    quantize_cmd.quantize_folder(tiny_checkpoint, tmp_path / "out", 8, decoder_bits=16)


def test_decoder_bits_need_a_decoder(tiny_checkpoint, tmp_path):
    text_only = tmp_path / "text-only"
    shutil.copytree(tiny_checkpoint, text_only, ignore=shutil.ignore_patterns("decoder*"))
    with pytest.raises(BadInput, match="leave out --decoder-bits 8"):
        quantize_cmd.quantize_folder(text_only, tmp_path / "out", 8, decoder_bits=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text-only"]


def test_quantize_command_stores_the_decoder(tiny_checkpoint, tmp_path, capsys):
    from engine import cli

    out = tmp_path / "int4"
    argv = ["quantize", "--model", str(tiny_checkpoint), "--bits", "4", "--decoder-bits", "8"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert quant.read_manifest(out)["decoder"]["stored"] == "int8"
    assert stored_quantized(out / "decoder-turbo")


@pytest.mark.gpu
def test_stored_decoder_on_cuda_matches_quantizing_as_it_streams(tiny_checkpoint, int8_folder):
    """Written on the CPU, loaded on CUDA in bf16: the same int8 weights as quantizing the bf16
    folder on the GPU while it streams in, so the same picture."""
    options = {"turbo": True, "device": "cuda", "dtype": torch.bfloat16}
    stored = ImageDecoder(int8_folder, **options)
    streamed = ImageDecoder(tiny_checkpoint, dit_bits=8, **options)
    buffers = dict(streamed.load_dit().named_buffers())
    for name, tensor in stored.load_dit().named_buffers():
        assert tensor.is_cuda and torch.equal(tensor, buffers[name]), name
    expected = streamed.decode(codes(), seed=3, steps=2)
    assert np.array_equal(stored.decode(codes(), seed=3, steps=2), expected)


def test_a_sharded_decoder_is_stored_with_a_new_index(tiny_checkpoint, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_checkpoint, model)
    folder = model / "decoder-turbo"
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    keys = sorted(state)
    weight_map = {}
    for number, part in enumerate((keys[::2], keys[1::2]), 1):
        name = f"model-0000{number}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, folder / name)
        weight_map |= dict.fromkeys(part, name)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = quantize_cmd.quantize_folder(model, tmp_path / "int8", 8, decoder_bits=8)
    index = json.loads((out / "decoder-turbo" / "model.safetensors.index.json").read_text())
    assert index["weight_map"]["layers.0.attention.to_q.qweight"].startswith("model-0000")
    assert "layers.0.attention.to_q.weight" not in index["weight_map"]
    expected = ImageDecoder(model, dit_bits=8).decode(codes(), seed=3, steps=2)
    assert np.array_equal(ImageDecoder(out).decode(codes(), seed=3, steps=2), expected)
