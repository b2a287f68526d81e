"""Image tokens to pixels: SigVQ features, the Z-Image transformer, the flow samplers and the VAE.

Shapes in comments: h w token grid, m resolution multiplier, L = 4hw caption tokens (the grid
upsampled 2x), S SigVQ width (4096), C = 16 latent channels, Hl Wl = 2hm 2wm latent size.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, ZImageTransformer2DModel
from torch import Tensor, nn

from engine.errors import BadCheckpoint, BadInput
from engine.vision import load_strict, read_json, read_safetensors

CODEBOOK_SIZE = 16384
SIGVQ_FILE = "sigvq_embedding.pt"
DIT_OVERRIDES = {"axes_lens": [32768, 1024, 1024]}  # cap_feat_dim is set to the SigVQ width
DIT_WEIGHT_NAMES = ("model.safetensors", "decoder_model.safetensors")

OnStep = Callable[[int, int], None]
OnLatent = Callable[[Tensor], None]  # the predicted clean latent after a step, [1, C, 1, Hl, Wl]
Velocity = Callable[[Tensor, Tensor], Tensor]  # (x [1, C, 1, Hl, Wl], t [1]) -> velocity float32

# ---------------------------------------------------------------------------------------------
# SigVQ: codes -> caption features


class _LinearSiLU(nn.Module):
    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.proj = nn.Linear(dim, inner)

    def forward(self, x: Tensor) -> Tensor:
        return F.silu(self.proj(x))


class _Projector(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        # diffusers FeedForward key layout: net.0.proj, net.1 (dropout: nothing at inference), net.2
        self.net = nn.Sequential(_LinearSiLU(dim, dim), nn.Identity(), nn.Linear(dim, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SigVQ(nn.Module):
    """Embedding of each VQ code, then Linear -> SiLU -> Linear; no norm, no residual."""

    def __init__(self, vocab_size: int = CODEBOOK_SIZE, dim: int = 4096):
        super().__init__()
        self.prior_token_embedding = nn.Embedding(vocab_size, dim)
        self.prior_projector = _Projector(dim)

    def forward(self, codes: Tensor) -> Tensor:
        """codes [h, w] -> features [4hw, S] of the 2x nearest-upsampled grid, raster order."""
        up = upsample_codes(codes).flatten()  # [4hw]
        return self.prior_projector(self.prior_token_embedding(up))


def upsample_codes(codes: Tensor) -> Tensor:
    """[h, w] -> [2h, 2w]: each code becomes a 2x2 block (official nearest interpolation)."""
    return codes.repeat_interleave(2, dim=0).repeat_interleave(2, dim=1)


# ---------------------------------------------------------------------------------------------
# Flow samplers (t = 0 noise, t = 1 data; the model predicts the velocity data - noise)


def shifted_grid(steps: int, shift: float = 6.0) -> Tensor:
    """`steps` points of linspace(0, 1) moved towards t = 0 by the SD3-style shift."""
    u = torch.linspace(0, 1, steps, dtype=torch.float32)
    return u / (u + shift - shift * u)


def guided_velocity(positive: Tensor, negative: Tensor, scale: float) -> Tensor:
    """CFG v = p + s(p - n), then shrunk so ||v|| <= ||p|| (L2 over each sample)."""
    v = positive + scale * (positive - negative)  # [B, ...]
    dims = tuple(range(1, v.ndim))
    norm_p = torch.linalg.vector_norm(positive, dim=dims, keepdim=True)
    norm_v = torch.linalg.vector_norm(v, dim=dims, keepdim=True)
    return torch.where(norm_v > norm_p, v * norm_p / norm_v, v)


def sample_normal(
    velocity: Velocity,
    shape: tuple[int, ...],
    *,
    steps: int = 50,
    shift: float = 6.0,
    generator: torch.Generator,
    on_step: OnStep | None = None,
    on_latent: OnLatent | None = None,
) -> Tensor:
    """Deterministic Euler over a `steps`-point shifted grid: steps - 1 model evaluations."""
    x = torch.randn(shape, generator=generator, device=generator.device)  # float32 noise
    t = shifted_grid(steps, shift).to(x.device)  # [steps]
    for k in range(steps - 1):
        v = velocity(x, t[k : k + 1])
        if on_latent is not None:
            on_latent(x + (1 - t[k]) * v)
        x = x + (t[k + 1] - t[k]) * v
        if on_step is not None:
            on_step(k + 1, steps - 1)
    return x


def sample_turbo(
    velocity: Velocity,
    shape: tuple[int, ...],
    *,
    steps: int = 8,
    stochastic_ratio: float = 1.0,
    generator: torch.Generator,
    on_step: OnStep | None = None,
    on_latent: OnLatent | None = None,
) -> Tensor:
    """The distilled sampler: `steps` evaluations on an unshifted grid, re-noising after each."""
    device = generator.device
    x = torch.randn(shape, generator=generator, device=device).double()  # state in float64
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64).float().tolist()
    r = stochastic_ratio
    for k in range(steps):
        v = velocity(x, torch.tensor([t[k]], device=device)).double()
        data = x + (1 - t[k]) * v  # predicted x1
        if on_latent is not None:
            on_latent(data.float())
        noise = x - t[k] * v  # predicted x0
        eps = torch.randn(shape, generator=generator, device=device, dtype=torch.float64)
        x = t[k + 1] * data + (1 - t[k + 1]) * ((1 - r) ** 0.5 * noise + r**0.5 * eps)
        if on_step is not None:
            on_step(k + 1, steps)
    return x.float()


# ---------------------------------------------------------------------------------------------
# Building and loading the parts


def dit_config(raw: dict, cap_feat_dim: int) -> dict:
    """A stored decoder config.json -> ZImageTransformer2DModel arguments with the overrides."""
    accepted = set(inspect.signature(ZImageTransformer2DModel.__init__).parameters) - {"self"}
    config = {k: v for k, v in raw.items() if k in accepted and k != "siglip_feat_dim"}
    return config | DIT_OVERRIDES | {"cap_feat_dim": cap_feat_dim}


def build_dit(config: dict) -> ZImageTransformer2DModel:
    try:
        return ZImageTransformer2DModel(**config)
    except (AssertionError, TypeError, ValueError) as error:
        raise BadCheckpoint(
            "The decoder config.json describes a transformer that cannot be built."
        ) from error


def load_sigvq(folder: Path, device, dtype) -> SigVQ:
    path = folder / SIGVQ_FILE
    if not path.is_file():
        raise BadCheckpoint(f"The SigVQ weights {path} are missing.")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # pickle and zip errors vary; all mean a bad file
        raise BadCheckpoint(f"The SigVQ weights {path} cannot be read.") from error
    table = state.get("prior_token_embedding.weight") if isinstance(state, dict) else None
    if table is None or table.ndim != 2:
        raise BadCheckpoint(f"{path} is not a SigVQ state dict.")
    with torch.device("meta"):
        model = SigVQ(table.shape[0], table.shape[1])
    load_strict(model, {k: v.to(device=device, dtype=dtype) for k, v in state.items()}, "SigVQ")
    return model.eval()


def load_dit(folder: Path, cap_feat_dim: int, device, dtype) -> ZImageTransformer2DModel:
    config = dit_config(read_json(folder / "config.json", "decoder config"), cap_feat_dim)
    with torch.device("meta"):
        model = build_dit(config)
    state = read_safetensors(dit_files(folder), rename=dit_key, device=device, dtype=dtype)
    load_strict(model, state, f"{folder.name} transformer")
    return model.eval()


def load_dit_quantized(
    folder: Path, cap_feat_dim: int, device, dtype, *, bits: int = 8, finished: bool = True
) -> ZImageTransformer2DModel:
    """The transformer with int`bits` linear layers, filled one tensor at a time.

    Built on the meta device, its linears swapped for QuantLinear from outside the model file
    (engine/quant.py), allocated once on `device`, then each tensor streams in from the mapped
    files: a bf16 folder's weights are quantized as they are read, a quantized folder's int8
    parts are copied as stored (no re-quantizing). The bf16 transformer is never held whole.
    `finished` is False for a folder without quantization.json (its stored parts are refused).
    """
    from engine import quant
    from engine.checkpoint import read_header

    device = torch.device(device)
    config = dit_config(read_json(folder / "config.json", "decoder config"), cap_feat_dim)
    files = dit_files(folder)
    for file in files:  # a cut-short file gets the checkpoint's sentence, not a buffer error
        read_header(file, folder.parent)
    with torch.device("meta"):
        model = nn.Module.to(build_dit(config), dtype)  # diffusers' own .to() warns of casts
    quant.quantize_linears(model, bits)
    model.to_empty(device=device)
    unquantized = None if finished else folder.parent
    quant.stream_into(model, files, device, rename=dit_key, unquantized=unquantized)
    quant.pack_model(model, dtype)
    return model.eval().requires_grad_(False)


def dit_key(key: str) -> str:
    """The official checkpoint's name -> diffusers' (the one rename: semantic_ -> cap_embedder)."""
    if key.startswith("semantic_embedder."):
        return "cap_embedder." + key[len("semantic_embedder.") :]
    return key


def stored_quantized(folder: Path) -> bool:
    """Whether the decoder folder's files hold quantized linears (written by `quantize`); False
    where they cannot be read, so that the plain loader says what is wrong, in its order."""
    from engine.checkpoint import read_header

    try:
        files = dit_files(folder)
        return any(n.endswith(".qweight") for f in files for n in read_header(f, folder.parent))
    except BadCheckpoint:
        return False


def dit_files(folder: Path) -> list[Path]:
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        weight_map = read_json(indexes[0], "decoder index").get("weight_map", {})
        files = [folder / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise BadCheckpoint(f"The decoder shard {folder / missing[0]} is missing.")
        return files
    for name in DIT_WEIGHT_NAMES:
        if (folder / name).is_file():
            return [folder / name]
    raise BadCheckpoint(f"{folder} holds no decoder weights (model.safetensors).")


def load_vae(folder: Path, device, dtype) -> AutoencoderKL:
    raw = read_json(folder / "config.json", "VAE config")
    accepted = set(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}
    with torch.device("meta"):
        try:
            model = AutoencoderKL(**{k: v for k, v in raw.items() if k in accepted})
        except (TypeError, ValueError) as error:
            raise BadCheckpoint(
                "The VAE config.json describes a model that cannot be built."
            ) from error
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.is_file():
        raise BadCheckpoint(f"The VAE weights {weights} are missing.")
    state = read_safetensors([weights], rename=lambda key: key, device=device, dtype=dtype)
    load_strict(model, state, "VAE")
    return model.eval()


def vae_to_pixels(vae: AutoencoderKL, latents: Tensor) -> np.ndarray:
    """latents [1, C, Hl, Wl] -> [8Hl, 8Wl, 3] uint8: unscale, decode, (x+1)/2, x255 truncated."""
    config = vae.config
    z = latents.to(vae.dtype) / config.scaling_factor + (config.shift_factor or 0.0)
    image = vae.decode(z).sample  # [1, 3, 8Hl, 8Wl] in -1..1
    image = ((image + 1) / 2).clamp(0, 1)
    return (image[0].float() * 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


@torch.inference_mode()
def fit_latent_rgb(vae: AutoencoderKL, size: int = 64) -> tuple[Tensor, Tensor]:
    """Least-squares map from a sampler latent pixel (C values) to the mean RGB (0..1) of the
    8x8 pixels it decodes to, fitted on this VAE's own encodings of a fixed set of colour
    fields and gradients: the cheap preview peer apps show while a picture forms."""
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, size)
    fields = [torch.rand(3, 1, 1, generator=g).expand(3, size, size) for _ in range(10)]
    fields += [torch.stack([ramp[None].expand(size, size), ramp[:, None].expand(size, size),
                            1 - ramp[None].expand(size, size)])]  # fmt: skip
    fields += [torch.rand(3, size // 8, size // 8, generator=g).repeat_interleave(8, 1)
               .repeat_interleave(8, 2) for _ in range(5)]  # fmt: skip
    rgb = torch.stack(fields)  # [N, 3, size, size] in 0..1
    param = next(vae.parameters())
    posterior = vae.encode((rgb * 2 - 1).to(param.device, param.dtype)).latent_dist
    config = vae.config
    latents = (posterior.mean.float().cpu() - (config.shift_factor or 0.0)) * config.scaling_factor
    target = F.avg_pool2d(rgb, 8)  # [N, 3, size/8, size/8]: the pixels each latent covers
    X = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])  # [samples, C]
    X = torch.cat([X, torch.ones(len(X), 1)], 1)
    Y = target.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(X.double(), Y.double()).solution.float()  # [C + 1, 3]
    return solution[:-1].T.contiguous(), solution[-1]  # weight [3, C], bias [3]


def latent_preview(latent: Tensor, weight: Tensor, bias: Tensor) -> np.ndarray:
    """latent [C, Hl, Wl] -> [Hl, Wl, 3] uint8 through the fitted map."""
    rgb = torch.einsum("chw,rc->hwr", latent.float().cpu(), weight) + bias
    return (rgb.clamp(0, 1) * 255).to(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------------
# The decoder


class ImageDecoder:
    """SigVQ, one Z-Image transformer (turbo or normal) and the VAE, each loaded on demand.

    Each part sits on `device` in `dtype` or is unloaded; a residency manager may free parts
    between decodes and `decode` loads whatever is missing.
    """

    def __init__(
        self,
        root: Path,
        *,
        turbo: bool = True,
        device="cpu",
        dtype=torch.float32,
        dit_bits: int | None = None,
    ):
        self.root = Path(root)
        self.turbo = turbo
        self.dit_bits = dit_bits  # 8: int8 linears; None: as stored (a quantized folder: int8)
        self.device = torch.device(device)
        self.dtype = dtype
        self.dit_folder = self.root / ("decoder-turbo" if turbo else "decoder")
        self.sigvq: SigVQ | None = None
        self.dit: ZImageTransformer2DModel | None = None
        self.vae: AutoencoderKL | None = None
        self._latent_rgb: tuple[Tensor, Tensor] | None = None

    def load(self) -> None:
        self.load_sigvq()
        self.load_dit()
        self.load_vae()

    def load_sigvq(self) -> SigVQ:
        if self.sigvq is None:
            self.sigvq = load_sigvq(self.root / "image_tokenizer", self.device, self.dtype)
        return self.sigvq

    def load_dit(self) -> ZImageTransformer2DModel:
        if self.dit is None:
            width = self.load_sigvq().prior_token_embedding.embedding_dim
            folder, device, dtype = self.dit_folder, self.device, self.dtype
            if self.dit_bits or stored_quantized(folder):
                from engine.quant import read_manifest

                finished = read_manifest(self.root) is not None
                bits = self.dit_bits or 8
                self.dit = load_dit_quantized(
                    folder, width, device, dtype, bits=bits, finished=finished
                )
            else:
                self.dit = load_dit(folder, width, device, dtype)
        return self.dit

    def load_vae(self) -> AutoencoderKL:
        if self.vae is None:
            self.vae = load_vae(self.root / "vae", self.device, self.dtype)
        return self.vae

    def latent_rgb(self) -> tuple[Tensor, Tensor]:
        """The linear latent-to-RGB map of this VAE, fitted once (see fit_latent_rgb)."""
        if self._latent_rgb is None:
            self._latent_rgb = fit_latent_rgb(self.load_vae())
        return self._latent_rgb

    def unload(self, part: str | None = None) -> None:
        """Free one part ("sigvq", "dit", "vae") or all of them."""
        for name in (part,) if part else ("sigvq", "dit", "vae"):
            setattr(self, name, None)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def decode(
        self,
        codes: torch.LongTensor,
        *,
        seed: int,
        steps: int | None = None,
        resolution_multiplier: int = 2,
        cfg_scale: float = 1.0,
        on_step: OnStep | None = None,
        on_preview: Callable[[np.ndarray], None] | None = None,
    ) -> np.ndarray:
        """codes [h, w] -> [16hm, 16wm, 3] uint8. cfg_scale applies to the normal decoder only.

        `on_preview` receives after each step a small [2hm, 2wm, 3] uint8 picture of where the
        step is heading: the predicted clean latent through a linear latent-to-RGB map.
        """
        h, w = check_codes(codes, resolution_multiplier)
        steps = steps if steps is not None else (8 if self.turbo else 50)
        if steps < 1:
            raise BadInput(f"The decoder needs at least one step, not {steps}.")
        cap = self.load_sigvq()(codes.to(self.device))  # [4hw, S]
        dit = self.load_dit()
        m = resolution_multiplier
        shape = (1, dit.config.in_channels, 1, 2 * h * m, 2 * w * m)  # [1, C, F, Hl, Wl]
        generator = torch.Generator(self.device).manual_seed(seed)
        on_latent = None
        if on_preview is not None:
            to_rgb = self.latent_rgb()

            def on_latent(latent: Tensor) -> None:
                on_preview(latent_preview(latent[0, :, 0], *to_rgb))

        sampler = sample_turbo if self.turbo else sample_normal
        caps = [cap] if self.turbo else [cap, torch.zeros_like(cap)]
        velocity = _dit_velocity(dit, caps, cfg_scale)
        x = sampler(
            velocity, shape, steps=steps, generator=generator, on_step=on_step, on_latent=on_latent
        )
        return vae_to_pixels(self.load_vae(), x[:, :, 0])


def _dit_velocity(dit: ZImageTransformer2DModel, caps: list[Tensor], cfg_scale=0.0) -> Velocity:
    """One forward over [positive, negative] captions (batched) or the positive one alone."""

    def velocity(x: Tensor, t: Tensor) -> Tensor:
        latent = x[0].to(dit.dtype)  # [C, 1, Hl, Wl]
        out = dit([latent] * len(caps), t.float().expand(len(caps)), caps, return_dict=False)[0]
        v = torch.stack(out).float()  # [B, C, 1, Hl, Wl]
        if len(caps) == 1:
            return v
        return guided_velocity(v[:1], v[1:], cfg_scale)

    return velocity


def check_codes(codes: Tensor, resolution_multiplier: int) -> tuple[int, int]:
    if not isinstance(codes, Tensor) or codes.ndim != 2 or codes.is_floating_point():
        raise BadInput("Image tokens must be a 2-D integer grid [h, w].")
    h, w = codes.shape
    if h == 0 or w == 0:
        raise BadInput("The image token grid is empty.")
    if int(codes.min()) < 0 or int(codes.max()) >= CODEBOOK_SIZE:
        raise BadInput(f"Image tokens must lie in 0..{CODEBOOK_SIZE - 1} (without the LLM offset).")
    if resolution_multiplier not in (1, 2, 3, 4):
        raise BadInput(
            f"The resolution multiplier must be 1, 2, 3 or 4, not {resolution_multiplier}."
        )
    if max(h, w) * resolution_multiplier > 1024 or 4 * h * w > 32766:
        raise BadInput(f"A {h}x{w} token grid is larger than the decoder's position range.")
    return h, w


def load_image_decoder(
    root: Path, *, turbo: bool = True, device="cpu", dtype: torch.dtype = torch.float32
) -> ImageDecoder:
    """SigVQ (image_tokenizer/), decoder-turbo/ or decoder/, and vae/ under the model root."""
    decoder = ImageDecoder(root, turbo=turbo, device=device, dtype=dtype)
    decoder.load()
    return decoder
