"""SigLIP-VQ image tokenizer: resize and crop rules, encoder and VQ step (reading: imagefile.py).

Shapes in comments: B batch, C channels, H W pixels, h w token grid (pixels / 16), N = h*w patches,
D encoder width, E code width, K codebook size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from engine.buckets import (  # noqa: F401 (moved there, torch-free)
    edit_buckets,
    nearest_bucket,
    understanding_size,
)
from engine.checkpoint import remedy
from engine.errors import BadCheckpoint, BadInput
from engine.imagefile import MAX_PIXELS, read_image  # noqa: F401 (moved there, torch-free)

# ---------------------------------------------------------------------------------------------
# Resize and crop rules


def resize_for_understanding(image: np.ndarray, n_images: int = 1) -> np.ndarray:
    """Bicubic resize to cover the smart_resize target, then a centred crop to 32-multiples."""
    height, width = image.shape[:2]
    target_h, target_w = understanding_size(height, width, n_images)
    scale = max(target_h / height, target_w / width)
    new_w, new_h = round(width * scale), round(height * scale)
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
    crop_h = min(max(new_h // 32 * 32, target_h), new_h)
    crop_w = min(max(new_w // 32 * 32, target_w), new_w)
    top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
    return np.ascontiguousarray(resized[top : top + crop_h, left : left + crop_w])


def official_edit_crop(image: np.ndarray) -> np.ndarray:
    """The official var_center_crop: a native-resolution centre crop to the nearest 512² bucket.

    Parts of the bucket outside a small image come out black, as in the official rule.
    """
    height, width = image.shape[:2]
    crop_w, crop_h = nearest_bucket(width, height)
    left, top = max(0, (width - crop_w) // 2), max(0, (height - crop_h) // 2)
    window = image[top : top + crop_h, left : left + crop_w]
    out = np.zeros((crop_h, crop_w, 3), dtype=np.uint8)
    out[: window.shape[0], : window.shape[1]] = window
    return out


def cover_resize(image: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    """Ours: resize the whole image to just cover size_wh, then centre crop the small overhang."""
    height, width = image.shape[:2]
    out_w, out_h = size_wh
    scale = max(out_w / width, out_h / height)
    new_w, new_h = max(out_w, math.ceil(width * scale)), max(out_h, math.ceil(height * scale))
    resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample))
    top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
    return np.ascontiguousarray(resized[top : top + out_h, left : left + out_w])


def fit_for_edit(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    return cover_resize(image, nearest_bucket(width, height))


# ---------------------------------------------------------------------------------------------
# The tokenizer model


@dataclass(frozen=True)
class ImageTokenizerConfig:
    """Field names match image_tokenizer/config.json (vision_config, vq_config) and the
    preprocessor_config.json; defaults are the real checkpoint's values."""

    hidden_size: int = 1536
    depth: int = 40
    num_heads: int = 16
    intermediate_size: int = 6144
    patch_size: int = 16
    image_size: int = 2048  # the learned position table covers image_size / patch_size per side
    in_channels: int = 3
    hidden_act: str = "gelu"
    attention_bias: bool = True
    layer_norm_eps: float = 1e-6
    spatial_merge_size: int = 1
    num_embeddings: int = 16384
    embed_dim: int = 2048
    latent_channels: int = 1536
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)
    rescale_factor: float = 1 / 255
    do_rescale: bool = True
    do_normalize: bool = True

    @classmethod
    def from_checkpoint(cls, folder: Path) -> ImageTokenizerConfig:
        raw = read_json(folder / "config.json", "image tokenizer config")
        vision, vq = raw.get("vision_config", raw), raw.get("vq_config", raw)
        pre = read_json(folder / "preprocessor_config.json", "image preprocessor config")
        values = {}
        for field in fields(cls):
            for source in (
                (pre, vq, vision) if field.name.startswith("image_") else (vision, vq, pre)
            ):
                if field.name in source:
                    value = source[field.name]
                    values[field.name] = tuple(value) if isinstance(value, list) else value
                    break
        # a flat or nested file works alike; vision keys are read before vq ones (in_channels)
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        if self.spatial_merge_size != 1 or self.hidden_size != self.latent_channels:
            raise BadCheckpoint("The image tokenizer config describes a model this app cannot run.")
        if self.hidden_act not in _ACTIVATIONS:
            raise BadCheckpoint(
                f"The image tokenizer uses an unknown activation {self.hidden_act}."
            )
        if self.hidden_size % self.num_heads:
            raise BadCheckpoint("The image tokenizer's hidden_size is not divisible by num_heads.")


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": lambda: _QuickGELU(),
}


class _QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class PatchEmbed(nn.Module):
    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        p = config.patch_size
        self.proj = nn.Conv2d(config.in_channels, config.hidden_size, kernel_size=p, stride=p)

    def forward(self, pixels: Tensor) -> Tensor:
        x = self.proj(pixels.to(self.proj.weight.dtype))  # [B, D, h, w]
        return x.flatten(2).transpose(1, 2)  # [B, N, D], patches in raster order


class PositionEmbedding(nn.Module):
    """A learned table of side x side positions, sampled bilinearly at each patch centre."""

    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        self.side = config.image_size // config.patch_size
        self.position_embedding = nn.Embedding(self.side * self.side, config.hidden_size)

    def forward(self, h: int, w: int) -> Tensor:
        table = self.position_embedding.weight.float()  # [side*side, D]
        table = table.T.reshape(1, -1, self.side, self.side)  # [1, D, side(y), side(x)]
        device = table.device
        ny = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 - 1  # [h]
        nx = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 - 1  # [w]
        grid = torch.stack(torch.meshgrid(nx, ny, indexing="xy"), dim=-1)[None]  # [1, h, w, 2]
        sampled = F.grid_sample(
            table, grid, mode="bilinear", align_corners=False, padding_mode="border"
        )  # [1, D, h, w]
        return sampled.flatten(2)[0].T.to(self.position_embedding.weight.dtype)  # [N, D]


class Attention(nn.Module):
    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        self.heads = config.num_heads
        bias = config.attention_bias
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)  # [B, N, 3, H, D/H]
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each [B, H, N, D/H]
        out = F.scaled_dot_product_attention(q, k, v)  # bidirectional within one image
        return self.proj(out.transpose(1, 2).reshape(B, N, D))


class MLP(nn.Module):
    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = _ACTIVATIONS[config.hidden_act]()
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionEncoder(nn.Module):
    """Patch conv, interpolated learned positions, pre-norm blocks; no final norm or merger."""

    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        self.patch_embed = PatchEmbed(config)
        self.embeddings = PositionEmbedding(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))

    def forward(self, pixels: Tensor) -> Tensor:
        h, w = (s // self.patch_embed.proj.stride[0] for s in pixels.shape[-2:])
        x = self.patch_embed(pixels) + self.embeddings(h, w)  # [B, N, D]
        for block in self.blocks:
            x = block(x)
        return x


class VectorQuantizer(nn.Module):
    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        self.embedding = nn.Embedding(config.num_embeddings, config.embed_dim)

    def forward(self, z: Tensor) -> Tensor:
        f = F.normalize(z, dim=-1)  # [M, E]
        e = F.normalize(self.embedding.weight, dim=-1)  # [K, E]
        distance = (f * f).sum(-1, keepdim=True) + (e * e).sum(-1) - 2 * f @ e.T  # [M, K]
        return distance.argmin(dim=-1)  # [M]


class VQModel(nn.Module):
    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        self.quantize = VectorQuantizer(config)
        self.quant_conv = nn.Conv2d(config.latent_channels, config.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(config.embed_dim, config.latent_channels, 1)  # unused

    def forward(self, features: Tensor, h: int, w: int) -> Tensor:
        B = features.shape[0]
        x = features.transpose(1, 2).reshape(B, -1, h, w)  # [B, D, h, w]
        z = self.quant_conv(x).permute(0, 2, 3, 1)  # [B, h, w, E]
        return self.quantize(z.reshape(B * h * w, -1)).view(B, h, w)  # [B, h, w]


class ImageTokenizer(nn.Module):
    """Pixels to VQ codes 0..K-1 (no LLM offset), one code per 16x16 patch, raster order."""

    def __init__(self, config: ImageTokenizerConfig):
        super().__init__()
        self.config = config
        self.visual = VisionEncoder(config)
        self.vqmodel = VQModel(config)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """pixel_values [B, 3, H, W] normalised -> codes [B, h, w]."""
        h, w = (s // self.config.patch_size for s in pixel_values.shape[-2:])
        return self.vqmodel(self.visual(pixel_values), h, w)

    def preprocess(self, image: np.ndarray) -> Tensor:
        """[H, W, 3] uint8 -> [1, 3, H, W] float32, rescaled and normalised like the official."""
        c = self.config
        p = c.patch_size
        height, width = image.shape[:2]
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise BadInput("The tokenizer needs an [H, W, 3] uint8 RGB image.")
        if height % p or width % p or height == 0 or width == 0:
            raise BadInput(
                f"The image is {width}x{height} pixels; both sides must be multiples of {p}, "
                "so resize it with one of the resize rules first."
            )
        x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float()  # [3, H, W]
        if c.do_rescale:
            x = x * c.rescale_factor
        if c.do_normalize:
            mean = torch.tensor(c.image_mean).view(3, 1, 1)
            std = torch.tensor(c.image_std).view(3, 1, 1)
            x = (x - mean) / std
        return x[None]

    @torch.inference_mode()
    def tokenize(self, image: np.ndarray) -> torch.LongTensor:
        """[H, W, 3] uint8 (sides multiples of 16) -> codes [H/16, W/16] on the CPU."""
        pixels = self.preprocess(image).to(self.visual.patch_embed.proj.weight.device)
        return self(pixels)[0].cpu()


# ---------------------------------------------------------------------------------------------
# Loading


def load_image_tokenizer(
    folder: Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> ImageTokenizer:
    """Build on the meta device, then load image_tokenizer/ weights strictly to device and dtype."""
    folder = Path(folder)
    if (folder / "image_tokenizer").is_dir():
        folder = folder / "image_tokenizer"
    config = ImageTokenizerConfig.from_checkpoint(folder)
    with torch.device("meta"):
        model = ImageTokenizer(config)
    files = _tokenizer_files(folder)

    def rename(key: str) -> str | None:
        for prefix in ("model.visual.", "model.vqmodel."):
            if key.startswith(prefix):
                return key[len("model.") :]
        return None  # anything else in the folder is not the tokenizer's

    state = read_safetensors(files, rename=rename, device=device, dtype=dtype)
    load_strict(model, state, "image tokenizer")
    return model.eval()


def _tokenizer_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index, "image tokenizer index").get("weight_map", {})
        names = {
            file
            for key, file in weight_map.items()
            if key.startswith(("model.visual.", "model.vqmodel."))
        }
        files = [folder / name for name in sorted(names)]
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise BadCheckpoint(f"{folder} holds no image tokenizer weights (*.safetensors).")
    for file in files:
        if not file.is_file():
            raise BadCheckpoint(f"The image tokenizer shard {file.name} is missing.")
    return files


def read_safetensors(
    files: Iterable[Path],
    *,
    rename: Callable[[str], str | None],
    device: str | torch.device,
    dtype: torch.dtype,
) -> dict[str, Tensor]:
    """Tensors from safetensors files, renamed (None drops a key), one at a time to device/dtype."""
    state: dict[str, Tensor] = {}
    for file in files:
        try:
            with safe_open(file, framework="pt", device=str(device)) as reader:
                for key in reader.keys():
                    name = rename(key)
                    if name is not None:
                        tensor = reader.get_tensor(key)
                        if tensor.is_floating_point():
                            # copy=True: a CPU tensor would otherwise be a view into the mapped
                            # file, whose alignment changes CPU kernels' rounding with the layout
                            tensor = tensor.to(dtype, copy=True)
                        state[name] = tensor
        except (SafetensorError, OSError) as error:
            raise BadCheckpoint(
                f"{file} is truncated or not a safetensors file; {remedy(file)}."
            ) from error
    return state


def load_strict(model: nn.Module, state: dict[str, Tensor], part: str) -> None:
    """load_state_dict(assign=True, strict=True) with a one-sentence BadCheckpoint on mismatch."""
    expected = set(model.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing:
        raise BadCheckpoint(
            f"The {part} weights lack {len(missing)} tensors, for example {missing[0]}."
        )
    if unexpected:
        raise BadCheckpoint(
            f"The {part} weights hold {len(unexpected)} unknown tensors, "
            f"for example {unexpected[0]}."
        )
    try:
        model.load_state_dict(state, assign=True, strict=True)
    except RuntimeError as error:
        raise BadCheckpoint(
            f"The {part} weights do not match its config.json (tensor shapes differ)."
        ) from error


def read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise BadCheckpoint(f"The {what} {path} is missing.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadCheckpoint(f"The {what} {path} is not valid JSON.") from error
