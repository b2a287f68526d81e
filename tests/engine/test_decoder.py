"""engine/decoder.py on the tiny checkpoint: shapes, seeds, both samplers, strict loading."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.decoder import (
    SigVQ,
    build_dit,
    dit_config,
    guided_velocity,
    load_image_decoder,
    sample_normal,
    sample_turbo,
    shifted_grid,
    upsample_codes,
)
from engine.errors import BadCheckpoint, BadInput, Cancelled


@pytest.fixture(scope="module")
def root(tiny_checkpoint) -> Path:
    return tiny_checkpoint  # engine.tiny writes the vision folders through write_tiny_vision


@pytest.fixture(scope="module")
def turbo(root):
    return load_image_decoder(root, turbo=True)


@pytest.fixture(scope="module")
def normal(root):
    return load_image_decoder(root, turbo=False)


def grid(h: int = 4, w: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 16384, (h, w), generator=torch.Generator().manual_seed(seed))


# --- decoding


@pytest.mark.parametrize("multiplier", [1, 2])
def test_decode_shape_is_16_times_grid_times_multiplier(turbo, multiplier):
    pixels = turbo.decode(grid(4, 3), seed=0, resolution_multiplier=multiplier)
    assert pixels.shape == (64 * multiplier, 48 * multiplier, 3) and pixels.dtype.name == "uint8"


@pytest.mark.parametrize("mode", ["turbo", "normal"])
def test_same_seed_same_pixels_different_seed_different(request, mode):
    decoder = request.getfixturevalue(mode)
    codes = grid()
    first = decoder.decode(codes, seed=7, steps=3)
    assert (first == decoder.decode(codes, seed=7, steps=3)).all()
    assert not (first == decoder.decode(codes, seed=8, steps=3)).all()


def test_different_codes_give_different_pixels(turbo):
    assert not (turbo.decode(grid(seed=1), seed=0) == turbo.decode(grid(seed=2), seed=0)).all()


def test_decoding_does_not_touch_the_global_rng(turbo):
    state = torch.random.get_rng_state()
    turbo.decode(grid(), seed=0, steps=2)
    assert torch.equal(state, torch.random.get_rng_state())


def test_turbo_and_normal_report_their_steps(turbo, normal):
    seen = []
    turbo.decode(grid(), seed=0, on_step=lambda step, total: seen.append((step, total)))
    assert seen == [(k, 8) for k in range(1, 9)]  # turbo defaults to 8 evaluations
    seen.clear()
    normal.decode(grid(), seed=0, steps=5, on_step=lambda step, total: seen.append((step, total)))
    assert seen == [(k, 4) for k in range(1, 5)]  # N grid points, N - 1 evaluations


def test_an_exception_in_on_step_cancels(turbo):
    def cancel(step, total):
        raise Cancelled()

    with pytest.raises(Cancelled):
        turbo.decode(grid(), seed=0, on_step=cancel)


def test_unload_frees_parts_and_decode_reloads(root):
    decoder = load_image_decoder(root, turbo=True)
    before = decoder.decode(grid(), seed=3, steps=2)
    decoder.unload("dit")
    assert decoder.dit is None and decoder.vae is not None
    decoder.unload()
    assert decoder.sigvq is None and decoder.vae is None
    assert (decoder.decode(grid(), seed=3, steps=2) == before).all()


@pytest.mark.parametrize(
    "codes, words",
    [
        (torch.tensor([[0, 16384]]), "0..16383"),
        (torch.tensor([[-1]]), "0..16383"),
        (torch.zeros(4, dtype=torch.long), "2-D"),
        (torch.zeros(2, 2), "2-D"),
        (torch.zeros(0, 3, dtype=torch.long), "empty"),
    ],
)
def test_bad_codes_are_refused_with_a_sentence(turbo, codes, words):
    with pytest.raises(BadInput, match=words) as error:
        turbo.decode(codes, seed=0)
    assert str(error.value).endswith(".")


def test_bad_multiplier_and_steps_are_refused(turbo):
    with pytest.raises(BadInput, match="multiplier"):
        turbo.decode(grid(), seed=0, resolution_multiplier=5)
    with pytest.raises(BadInput, match="step"):
        turbo.decode(grid(), seed=0, steps=0)


# --- samplers


def test_shifted_grid_matches_the_official_values():
    expected = [0, 0.02703, 0.0625, 0.11111, 0.18182, 0.29412, 0.5, 1]
    assert torch.allclose(shifted_grid(8), torch.tensor(expected), atol=1e-4)


def test_normal_sampler_evaluates_at_the_grid_without_its_end():
    times = []

    def velocity(x, t):
        times.append(float(t))
        return torch.ones_like(x)

    x = sample_normal(velocity, (1, 2), steps=8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn((1, 2), generator=torch.Generator().manual_seed(0))
    assert times == pytest.approx(shifted_grid(8)[:-1].tolist())
    assert torch.allclose(x, noise + 1)  # Euler over [0, 1] with a constant velocity of one


def test_turbo_sampler_renoises_on_an_unshifted_grid_and_lands_on_the_prediction():
    times = []

    def velocity(x, t):
        times.append(float(t))
        return 2 * torch.ones_like(x)

    x = sample_turbo(velocity, (1, 3), steps=4, generator=torch.Generator().manual_seed(0))
    assert times == [0, 0.25, 0.5, 0.75] and x.dtype == torch.float32
    generator = torch.Generator().manual_seed(0)
    state = torch.randn((1, 3), generator=generator).double()
    grid_points = [0, 0.25, 0.5, 0.75, 1]
    for k in range(4):  # x <- t' * (x + (1 - t) v) + (1 - t') * fresh noise
        eps = torch.randn((1, 3), generator=generator, dtype=torch.float64)
        state = (
            grid_points[k + 1] * (state + (1 - grid_points[k]) * 2) + (1 - grid_points[k + 1]) * eps
        )
    assert torch.allclose(x.double(), state, atol=1e-6)


def test_guidance_is_2p_minus_n_clamped_to_the_positive_norm():
    p = torch.tensor([[3.0, 4.0]])  # norm 5
    n = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(guided_velocity(p, n, 1.0), p)
    n = torch.tensor([[6.0, 8.0]])  # 2p - n = 0: inside the norm, kept
    assert torch.allclose(guided_velocity(p, n, 1.0), torch.zeros(1, 2))
    n = torch.tensor([[0.0, 0.0]])  # 2p - n = 2p: clamped back to norm 5
    assert torch.allclose(guided_velocity(p, n, 1.0), p)
    v = guided_velocity(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]), 1.0)
    assert torch.linalg.vector_norm(v) == pytest.approx(1.0)
    assert v[0, 0] > 0 and v[0, 1] < 0


def test_codes_are_upsampled_into_2x2_blocks():
    assert upsample_codes(torch.tensor([[1, 2]])).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]


# --- loading


def copy_model(root: Path, tmp_path: Path) -> Path:
    shutil.copytree(root, tmp_path / "model")
    return tmp_path / "model"


def test_checkpoint_keys_are_official_and_load_strictly(root, tmp_path):
    state = load_file(root / "decoder-turbo" / "model.safetensors")
    assert any(k.startswith("semantic_embedder.") for k in state)
    assert not any(k.startswith("cap_embedder.") for k in state)

    model = copy_model(root, tmp_path)
    weights = model / "decoder-turbo" / "model.safetensors"
    save_file(state | {"extra.weight": torch.zeros(2)}, weights)
    with pytest.raises(BadCheckpoint, match="unknown tensors, for example extra.weight"):
        load_image_decoder(model)
    missing = dict(state)
    missing.pop("x_pad_token")
    save_file(missing, weights)
    with pytest.raises(BadCheckpoint, match="lack 1 tensors, for example x_pad_token"):
        load_image_decoder(model)
    wrong = dict(state) | {"x_pad_token": torch.zeros(1, 5)}
    save_file(wrong, weights)
    with pytest.raises(BadCheckpoint, match="shapes"):
        load_image_decoder(model)


def test_old_weight_name_and_shards_load(root, turbo, tmp_path):
    expected = turbo.decode(grid(), seed=0, steps=2)
    model = copy_model(root, tmp_path)
    folder = model / "decoder-turbo"
    (folder / "model.safetensors").rename(folder / "decoder_model.safetensors")
    assert (load_image_decoder(model).decode(grid(), seed=0, steps=2) == expected).all()

    state = load_file(folder / "decoder_model.safetensors")
    (folder / "decoder_model.safetensors").unlink()
    keys = sorted(state)
    halves = {
        "model-00001-of-00002.safetensors": keys[::2],
        "model-00002-of-00002.safetensors": keys[1::2],
    }
    weight_map = {}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, folder / name)
        weight_map |= dict.fromkeys(part, name)
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    assert (load_image_decoder(model).decode(grid(), seed=0, steps=2) == expected).all()
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(BadCheckpoint, match="model-00002-of-00002.safetensors is missing"):
        load_image_decoder(model)


def test_missing_parts_and_pickled_code_are_refused(root, tmp_path):
    model = copy_model(root, tmp_path)
    sigvq = model / "image_tokenizer" / "sigvq_embedding.pt"
    torch.save({"prior_token_embedding.weight": Path("code")}, sigvq)  # needs unpickling code
    with pytest.raises(BadCheckpoint, match="cannot be read"):
        load_image_decoder(model)
    shutil.copy(root / "image_tokenizer" / "sigvq_embedding.pt", sigvq)
    shutil.rmtree(model / "vae")
    with pytest.raises(BadCheckpoint, match="VAE config .* is missing"):
        load_image_decoder(model)
    shutil.rmtree(model / "decoder")
    with pytest.raises(BadCheckpoint, match="decoder config"):
        load_image_decoder(model, turbo=False)


def test_real_decoder_configs_have_the_published_parameter_counts():
    with torch.device("meta"):
        dit = build_dit(dit_config({"siglip_feat_dim": None}, cap_feat_dim=4096))
        sigvq = SigVQ()
    assert all(p.is_meta for p in dit.parameters())
    assert sum(p.numel() for p in dit.parameters()) == 6_160_808_512  # dim 3840, 30 layers
    assert sum(p.numel() for p in sigvq.parameters()) == 100_671_488


def test_previews_come_once_per_step_small_and_reproducible(root):
    from engine.decoder import ImageDecoder

    codes = torch.randint(0, 16384, (3, 5), generator=torch.Generator().manual_seed(0))
    for turbo, steps, calls in ((True, 4, 4), (False, 5, 4)):
        decoder = ImageDecoder(root, turbo=turbo)
        runs = []
        for _ in range(2):
            previews = []
            decoder.decode(codes, seed=3, steps=steps, on_preview=previews.append)
            runs.append(previews)
        assert len(runs[0]) == calls
        assert all(p.shape == (12, 20, 3) and p.dtype == np.uint8 for p in runs[0])
        assert all(np.array_equal(a, b) for a, b in zip(*runs))


def test_the_preview_map_is_fitted_on_the_vae(root):
    from engine.decoder import fit_latent_rgb, latent_preview, load_vae

    vae = load_vae(root / "vae", "cpu", torch.float32)
    weight, bias = fit_latent_rgb(vae)
    assert weight.shape == (3, vae.config.latent_channels) and bias.shape == (3,)
    assert torch.isfinite(weight).all()
    flat = latent_preview(torch.zeros(vae.config.latent_channels, 2, 2), weight, bias)
    assert np.array_equal(flat[0, 0], (bias.clamp(0, 1) * 255).to(torch.uint8).numpy())
