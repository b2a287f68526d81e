"""The tasks users run: understand (chat about images), generate (plain, thinking), edit (masked).

Each task takes the official defaults (shared/notes/backbone_facts.md §6), reports progress by
stage, streams text, can be cancelled between two steps (raise `Cancelled` in `on_progress`), and
returns its result with the metadata needed to reproduce it. One seed drives every random draw.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import json
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine import args, masking, quant, residency, streaming, text, vision
from engine.args import NO_INSTRUCTION, NO_PROMPT, NO_QUESTION, THRESHOLD_OFF
from engine.backbone import Backbone, load_backbone
from engine.checkpoint import find_model_folder, validate_model_folder
from engine.errors import BadInput
from engine.sampler import Sampling, StepReport, cfg, cfg_edit, denoise, generate_text
from engine.text import ImageCodes, TextTokenizer
from engine.token_preview import TokenPalette

if TYPE_CHECKING:  # the decoder module imports diffusers: only when an image is decoded
    from engine.decoder import ImageDecoder

OnProgress = Callable[[str, int, int], None]  # (stage, step, total)
OnText = Callable[[str], None]
OnPreview = Callable[[np.ndarray], None]  # [h, w, 3] uint8, a small picture of a decode step

STAGE_LOAD, STAGE_ENCODE, STAGE_THINK = "load model", "encode image", "thinking"
STAGE_DENOISE, STAGE_DECODE, STAGE_COMPOSITE = "denoise tokens", "decode", "composite"
MIN_SIDE, MAX_SIDE, SIDE_STEP = 256, 1024, 32
CODE_CACHE_IMAGES = 64  # images whose VQ codes stay cached (a few KB each), for chats and edits


@dataclass(frozen=True)
class Turn:
    role: str  # "user" or "assistant"
    text: str
    images: tuple[np.ndarray, ...] = ()  # [H, W, 3] uint8 each


@dataclass(frozen=True)
class ImageOutput:
    image: np.ndarray  # [H, W, 3] uint8
    metadata: dict[str, str]
    thinking: str | None = None
    codes: np.ndarray | None = None  # [h, w] the VQ codes the image was decoded from


@dataclass(frozen=True)
class Defaults:
    """Official defaults per task (facts §6); a request may override each."""

    t2i_steps: int = 8
    t2i_cfg: float = 2.0
    thinking_steps: int = 32
    thinking_length: int = 4096
    edit_steps: int = 8
    edit_cfg_text: float = 4.0
    edit_cfg_image: float = 0.0
    edit_budget: int = 512  # crop buckets hold about edit_budget² px (official: 512)
    understand_steps: int = 32
    understand_length: int = 2048
    block_length: int = 32
    # Threshold acceptance, as the official loop runs it: every drawn token above the threshold
    # commits at once. THRESHOLD_OFF (1.0) commits a fixed number of tokens per step.
    threshold: float = 0.95
    # The KV cache of completed blocks: exact, ours (the official loop re-runs the whole prefix
    # each step). The official baseline is threshold 0.95 without the cache.
    use_cache: bool = True
    temperature: float = 0.0  # the official default; 0 takes the most likely token
    top_k: int | None = None  # the official default: every token may be drawn
    top_p: float | None = None
    cfg_rescale: float = 0.0  # sglang-omni uses 0.7; the Uni-derived LLaDA-Image copy uses none
    decoder_turbo: bool = True
    decoder_steps: int | None = None  # None: the decoder's own (turbo 8, normal 50)
    resolution_multiplier: int = 2  # output px per token = 16 x this (official 2)
    # Image tokens are drawn from the 16384 VQ ids only, masked after CFG as sglang-omni does
    # (facts §3.9; unconfirmed for the official code, whose LLaDA-Image copy does not mask).
    image_only_vocab: bool = True

    def official_baseline(self) -> Defaults:
        """The loop exactly as the official code runs it: threshold 0.95 and no KV cache."""
        return replace(self, threshold=0.95, use_cache=False)


@dataclass(frozen=True)
class Loop:
    """How one denoising loop runs, from a request's values or else the defaults, checked."""

    steps: int
    block_length: int
    threshold: float  # THRESHOLD_OFF: a fixed number of tokens per step
    use_cache: bool
    temperature: float
    top_k: int | None
    top_p: float | None

    def sampler_options(self) -> dict:
        threshold = None if self.threshold >= THRESHOLD_OFF else self.threshold
        return {
            "steps": self.steps,
            "block_length": self.block_length,
            "threshold": threshold,
            "use_cache": self.use_cache,
            "sampling": Sampling(self.temperature, self.top_k, self.top_p),
        }

    def metadata(self, prefix: str = "") -> dict:
        threshold = "off" if self.threshold >= THRESHOLD_OFF else self.threshold
        return {
            f"{prefix}steps": self.steps,
            "block_length": self.block_length,
            "threshold": threshold,
            "use_cache": self.use_cache,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
        }


@dataclass(frozen=True)
class Decoding:
    """How image tokens become pixels: which decoder, its steps, and px per token / 16."""

    turbo: bool
    steps: int | None  # None: the decoder's own (turbo 8, normal 50)
    resolution_multiplier: int

    def metadata(self) -> dict:
        return {
            "decoder": "turbo" if self.turbo else "normal",
            "decoder_steps": self.steps if self.steps is not None else (8 if self.turbo else 50),
            "resolution_multiplier": self.resolution_multiplier,
        }


# Metadata keys that measure a run rather than set it; every other key is a parameter (or names
# the model and app), equal for two runs that should give the same result.
MEASURED_KEYS = ("elapsed_s",)


def parameters(metadata: dict[str, str]) -> dict[str, str]:
    """A result's parameters: its metadata without the measured keys (the wall time)."""
    return {k: v for k, v in metadata.items() if k not in MEASURED_KEYS}


def _given(value, default):
    return default if value is None else value


def app_version() -> str:
    try:
        return importlib.metadata.version("llada-studio")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Pipeline:
    """The loaded model: backbone and tokenizer at once, vision parts on first use."""

    def __init__(self, root: Path, revision: str | None, backbone: Backbone, device, dtype):
        self.root, self.revision = root, revision
        self.backbone = backbone
        self.device, self.dtype = device, dtype
        c = backbone.config
        self.tokenizer = TextTokenizer(root, c.image_token_offset, c.pad_token_id)
        self.defaults = Defaults()
        self.image_tokenizer: vision.ImageTokenizer | None = None
        self.decoder: ImageDecoder | None = None
        self._codes: OrderedDict[str, torch.Tensor] = OrderedDict()  # digest -> VQ codes (LRU)
        self._palette: TokenPalette | None = None  # colours of the token preview, made once
        self.settings: residency.Settings | None = None  # precisions and memory plan (issue 9)

    @classmethod
    def load(
        cls,
        folder: Path | str,
        *,
        device: str = "auto",
        on_progress: OnProgress | None = None,
        precision: str | None = None,
        vram: float | None = None,
    ) -> Pipeline:
        """`precision` bf16/int8/int4 and `vram` (GiB) None: chosen by engine/residency.py."""
        found = find_model_folder(folder)
        validate_model_folder(found.root, parts=("backbone", "tokenizer"))
        dev = pick_device(device)
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32  # as upstream on CPU

        def shard_done(done: int, total: int) -> None:
            if on_progress:
                on_progress(STAGE_LOAD, done, total)

        settings = residency.resolve(found.root, dev, precision, vram)
        if streaming.streams(settings):  # < 12 GB: the experts stay in pinned host memory
            backbone = streaming.load_backbone(found.root, dev, dtype, settings, shard_done)
        elif settings.precision == "bf16" and quant.folder_precision(found.root) == "bf16":
            backbone = load_backbone(found.root, dev, dtype, on_progress=shard_done)
        else:  # quantized as it streams in, an FP8 checkpoint, or a quantized folder
            backbone = quant.load_backbone(
                found.root, dev, dtype, settings.precision, on_progress=shard_done
            )
        pipeline = cls(found.root, found.revision, backbone, dev, dtype)
        pipeline.settings = settings
        return pipeline

    # ---- parts loaded on demand -------------------------------------------------------------

    def _image_tokenizer(self) -> vision.ImageTokenizer:
        if self.image_tokenizer is None:
            validate_model_folder(self.root, parts=("image_tokenizer",))
            self.image_tokenizer = vision.load_image_tokenizer(self.root, self.device, self.dtype)
            if self.settings and self.settings.precision != "bf16":  # the plan's int8 encoder
                quant.quantize_loaded(self.image_tokenizer.visual, 8)
        return self.image_tokenizer

    def _decoder(self, turbo: bool) -> ImageDecoder:
        from engine.decoder import ImageDecoder  # diffusers: a text-only task never loads it

        if self.decoder is None or self.decoder.turbo != turbo:
            part = "decoder_turbo" if turbo else "decoder"
            validate_model_folder(self.root, parts=(part, "vae"))
            int8 = self.settings is not None and self.settings.decoder == "int8"
            self.decoder = ImageDecoder(  # int8: quantized as it streams in, or as stored
                self.root, turbo=turbo, device=self.device, dtype=self.dtype,
                dit_bits=8 if int8 else None,
            )  # fmt: skip
            streaming.stream_decoder(self)  # < 12 GB: its blocks stream from host memory
        return self.decoder

    def unload(self) -> None:
        self.image_tokenizer = self.decoder = None
        self.backbone = None  # type: ignore[assignment]
        self._codes.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def status(self) -> dict[str, str]:
        loaded = [
            name
            for name, part in [
                ("backbone", self.backbone),
                ("image tokenizer", self.image_tokenizer),
                ("decoder", self.decoder),
            ]
            if part is not None
        ]
        if self.device.type == "cuda":
            memory = f"{torch.cuda.memory_allocated(self.device) / 2**30:.1f} GiB"
        else:
            rss = _rss_gib()
            memory = "unknown" if rss is None else f"{rss:.1f} GiB (process)"
        return {
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "precision": self.settings.describe() if self.settings else "bf16",
            "sizes": residency.loaded_sizes(self),
            "memory": memory,
            "loaded": ", ".join(loaded) or "nothing",
            "model": str(self.root),
        }

    # ---- shared steps -----------------------------------------------------------------------

    def tokenize(self, image: np.ndarray, on_progress: OnProgress | None = None) -> ImageCodes:
        """VQ codes of an image already resized to multiples of 16; cached by content."""
        key = hashlib.sha1(np.ascontiguousarray(image)).hexdigest() + str(image.shape)
        if key not in self._codes:
            _report(on_progress, STAGE_ENCODE, 0, 1)
            self._codes[key] = self._image_tokenizer().tokenize(image)
            _report(on_progress, STAGE_ENCODE, 1, 1)
            while len(self._codes) > CODE_CACHE_IMAGES:
                self._codes.popitem(last=False)
        self._codes.move_to_end(key)
        return ImageCodes(self._codes[key].numpy())

    def _loop(self, steps: int | None, default_steps: int, **given) -> Loop:
        """The request's loop values (block_length, threshold, use_cache, temperature, top_k,
        top_p), or else the defaults, each checked against engine/args.py."""
        d = self.defaults
        values = {name: _given(value, getattr(d, name)) for name, value in given.items()}
        loop = Loop(steps=_given(steps, default_steps), **values)
        for f in fields(loop):
            args.check(f.name, getattr(loop, f.name))
        args.check_steps(loop.steps, loop.block_length)
        return loop

    def _denoise_image(
        self, prompts, init, *, grid, loop: Loop, guidance, seed, on_progress, on_preview
    ) -> torch.Tensor:
        residency.take_turn(self, "backbone")  # small cards: the decoder waits on the host
        c, d = self.backbone.config, self.defaults
        generator = torch.Generator(self.device).manual_seed(seed)
        on_step = _stage_steps(on_progress, STAGE_DENOISE)
        if on_preview is not None:
            on_step = _both(self._token_preview(grid, on_preview), on_step)
        return denoise(
            self.backbone,
            prompts,
            init,
            mask_id=self.tokenizer.mask_id,
            guidance=guidance,
            allowed_vocab=(c.image_token_offset, c.vocab_size) if d.image_only_vocab else None,
            generator=generator,
            on_step=on_step,
            **loop.sampler_options(),
        )

    def _token_preview(self, grid: tuple[int, int], on_preview: OnPreview):
        """An on_step that sends a picture of the committed image tokens (masked ones grey)."""
        if self._palette is None:
            self._palette = TokenPalette.from_model(self.root)
        palette, offset = self._palette, self.backbone.config.image_token_offset

        def on_step(report: StepReport) -> None:
            codes = report.tokens.view(grid).cpu().numpy() - offset  # mask id lands out of range
            on_preview(palette.paint(codes))

        return on_step

    def _write_text(self, ids, length, loop: Loop, seed, stop_ids, on_step) -> list[int]:
        """The text loop (§5.1) on the full vocabulary, up to EOS or a stop id."""
        residency.take_turn(self, "backbone")
        with torch.inference_mode():
            return generate_text(
                self.backbone,
                ids,
                mask_id=self.tokenizer.mask_id,
                eos_id=self.tokenizer.eos_id,
                gen_length=length,
                stop_ids=stop_ids,
                generator=torch.Generator(self.device).manual_seed(seed),
                on_step=on_step,
                **loop.sampler_options(),
            )

    def _decoding(self, turbo, decoder_steps, resolution_multiplier) -> Decoding:
        d = self.defaults
        decoding = Decoding(
            turbo=_given(turbo, d.decoder_turbo),
            steps=_given(decoder_steps, d.decoder_steps),
            resolution_multiplier=_given(resolution_multiplier, d.resolution_multiplier),
        )
        args.check("turbo", decoding.turbo)
        args.check("decoder_steps", decoding.steps)
        args.check("resolution_multiplier", decoding.resolution_multiplier)
        return decoding

    def _decode(self, codes, seed: int, on_progress, decoding: Decoding, on_preview) -> np.ndarray:
        residency.take_turn(self, "decoder")  # small cards: the backbone waits on the host
        decoder = self._decoder(decoding.turbo)

        def on_step(step: int, total: int) -> None:
            _report(on_progress, STAGE_DECODE, step, total)

        return decoder.decode(
            codes,
            seed=seed,
            steps=decoding.steps,
            resolution_multiplier=decoding.resolution_multiplier,
            on_step=on_step,
            on_preview=on_preview,
        )

    def _metadata(self, task: str, seed: int, started: float, **fields) -> dict[str, str]:
        """Every parameter of the result, then the model and app, then the wall time apart
        (MEASURED_KEYS), so two runs can be compared by `parameters(metadata)`."""
        meta = {
            "task": task,
            "seed": seed,
            **fields,
            "model": str(self.root),
            "model revision": self.revision or "unknown",
            "app version": app_version(),
            "elapsed_s": round(time.perf_counter() - started, 2),
        }
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}

    # ---- tasks ------------------------------------------------------------------------------

    def generate(
        self,
        prompt: str,
        *,
        width: int = 1024,
        height: int = 1024,
        seed: int = 0,
        thinking: bool = False,
        steps: int | None = None,
        cfg_scale: float | None = None,
        cfg_rescale: float | None = None,
        turbo: bool | None = None,
        decoder_steps: int | None = None,
        resolution_multiplier: int | None = None,
        thinking_steps: int | None = None,
        thinking_length: int | None = None,
        block_length: int | None = None,
        threshold: float | None = None,
        use_cache: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        on_progress: OnProgress | None = None,
        on_preview: OnPreview | None = None,
        on_text: OnText | None = None,
    ) -> ImageOutput:
        """Text to image; in thinking mode the model first writes its reasoning (streamed).

        `width` and `height` set the token grid, one token per 32 px as the official code does;
        the decoder paints 16 x `resolution_multiplier` px per token, so the image has the asked
        size at the official multiplier 2. None takes the official default (`Defaults`).
        `on_preview` gets a small picture before each step's progress: the committed image tokens
        in false colour while they denoise (engine/token_preview.py), then each decoder step's
        predicted image.
        """
        started = time.perf_counter()
        prompt = need_text(prompt, NO_PROMPT)
        check_size(width, height)
        d = self.defaults
        _check(seed=seed, thinking=thinking, cfg_scale=cfg_scale, cfg_rescale=cfg_rescale)
        loop = self._loop(
            steps, d.t2i_steps, block_length=block_length, threshold=threshold,
            use_cache=use_cache, temperature=temperature, top_k=top_k, top_p=top_p,
        )  # fmt: skip
        decoding = self._decoding(turbo, decoder_steps, resolution_multiplier)
        scale = _given(cfg_scale, d.t2i_cfg)
        rescale = _given(cfg_rescale, d.cfg_rescale)
        h, w = height // 32, width // 32
        uncond = self.tokenizer.encode(text.text_to_image_uncond(h, w))
        thought, think = None, {}
        if thinking:
            think_loop = replace(loop, steps=_given(thinking_steps, d.thinking_steps))
            length = _given(thinking_length, d.thinking_length)
            _check(thinking_steps=think_loop.steps, thinking_length=length)
            args.check_steps(think_loop.steps, loop.block_length, "The thinking steps per block")
            thought, cond = self._think(
                prompt, (h, w), length, think_loop, seed, on_progress, on_text
            )
            think = {"thinking_steps": think_loop.steps, "thinking_length": length}
        else:
            cond = self.tokenizer.encode(text.text_to_image(prompt, h, w))
        self._check_context(len(cond) + h * w)
        init = torch.full((h * w,), self.tokenizer.mask_id, dtype=torch.long)
        prompts, guidance = ([cond, uncond], cfg(scale, rescale)) if scale != 1 else ([cond], None)
        with torch.inference_mode():
            tokens = self._denoise_image(
                prompts,
                init,
                grid=(h, w),
                loop=loop,
                guidance=guidance,
                seed=seed,
                on_progress=on_progress,
                on_preview=on_preview,
            )
        codes = (tokens - self.backbone.config.image_token_offset).view(h, w)
        image = self._decode(codes, seed, on_progress, decoding, on_preview)
        meta = self._metadata(
            "generate",
            seed,
            started,
            prompt=prompt,
            width=width,
            height=height,
            grid=[h, w],
            cfg_scale=scale,
            cfg_rescale=rescale,
            thinking=thinking,
            **think,
            **loop.metadata(),
            **decoding.metadata(),
            image_only_vocab=d.image_only_vocab,
        )
        return ImageOutput(image, meta, thought, codes.numpy())

    def _think(self, prompt, grid, length, loop, seed, on_progress, on_text):
        """Phase 1: thinking text until <boi>. The model's own image header is replaced by one
        for the requested grid, so the image has the size the user asked for."""
        h, w = grid
        ids = self.tokenizer.encode(text.thinking(prompt))
        room = self.backbone.config.max_position_embeddings - len(ids) - h * w - 8
        length = min(length, room)
        if length < loop.block_length:
            raise BadInput("The prompt is too long for thinking mode; shorten it.")
        streamer = TextStreamer(self.tokenizer, on_text)
        out = self._write_text(
            ids, length, loop, seed, [self.tokenizer.begin_image_id],
            _both(_stage_steps(on_progress, STAGE_THINK), streamer.update),
        )  # fmt: skip
        start_id = self.tokenizer.token_id(text.IMAGE_START)
        if start_id in out:  # drop the header the model began writing
            out = out[: len(out) - out[::-1].index(start_id) - 1]
        thought = self.tokenizer.decode(out)
        streamer.finish(thought)
        return thought, ids + out + self.tokenizer.encode([text.image_header(h, w)])

    def edit(
        self,
        image: np.ndarray,
        instruction: str,
        *,
        mask: np.ndarray | None = None,
        seed: int = 0,
        steps: int | None = None,
        cfg_text_scale: float | None = None,
        cfg_image_scale: float | None = None,
        cfg_rescale: float | None = None,
        turbo: bool | None = None,
        decoder_steps: int | None = None,
        resolution_multiplier: int | None = None,
        block_length: int | None = None,
        threshold: float | None = None,
        use_cache: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        on_progress: OnProgress | None = None,
        on_preview: OnPreview | None = None,
        on_place: Callable[[tuple[int, int, int, int]], None] | None = None,
    ) -> ImageOutput:
        """Instruction edit. With a mask only the masked tokens are generated (the rest stay the
        source tokens) in a context crop, and only pixels under the feathered mask change.

        `on_place` learns, before the first preview, the crop (x0, y0, x1, y1 in the image's
        pixels) that the previews show, so a window can draw them over the edited region."""
        started = time.perf_counter()
        instruction = need_text(instruction, NO_INSTRUCTION)
        image = check_image(image)
        c, d = self.backbone.config, self.defaults
        _check(seed=seed, cfg_text_scale=cfg_text_scale, cfg_image_scale=cfg_image_scale)
        _check(cfg_rescale=cfg_rescale)
        loop = self._loop(
            steps, d.edit_steps, block_length=block_length, threshold=threshold,
            use_cache=use_cache, temperature=temperature, top_k=top_k, top_p=top_p,
        )  # fmt: skip
        decoding = self._decoding(turbo, decoder_steps, resolution_multiplier)
        full = (
            np.zeros(image.shape[:2], bool)
            if mask is None
            else masking.validate_mask(mask, image.shape)
        )
        plan = masking.plan_edit(image.shape[:2], full, buckets=vision.edit_buckets(d.edit_budget))
        if on_place is not None:
            on_place(tuple(int(v) for v in plan.box))
        crop = masking.crop_to_bucket(image, plan)
        source = self.tokenize(crop, on_progress)
        gh, gw = source.grid
        repaint = np.ones((gh, gw), bool) if plan.is_global else masking.token_mask(full, plan)
        init = torch.from_numpy(source.codes.astype(np.int64) + c.image_token_offset).view(-1)
        init[torch.from_numpy(repaint).view(-1)] = self.tokenizer.mask_id
        ts = _given(cfg_text_scale, d.edit_cfg_text)
        si = _given(cfg_image_scale, d.edit_cfg_image)
        rescale = _given(cfg_rescale, d.cfg_rescale)
        prompts = [self.tokenizer.encode(text.edit(source, instruction))]
        prompts.append(self.tokenizer.encode(text.edit_no_text(source)))
        if si:
            prompts.append(self.tokenizer.encode(text.edit_no_image(instruction, gh, gw)))
        self._check_context(len(prompts[0]) + gh * gw)
        with torch.inference_mode():
            tokens = self._denoise_image(
                prompts,
                init,
                loop=loop,
                grid=(gh, gw),
                guidance=cfg_edit(ts, si, rescale),
                seed=seed,
                on_progress=on_progress,
                on_preview=on_preview,
            )
        codes = tokens.view(gh, gw) - c.image_token_offset
        generated = self._decode(codes, seed, on_progress, decoding, on_preview)
        _report(on_progress, STAGE_COMPOSITE, 0, 1)
        result = masking.composite(image, generated, plan, full)
        _report(on_progress, STAGE_COMPOSITE, 1, 1)
        meta = self._metadata(
            "edit",
            seed,
            started,
            instruction=instruction,
            width=image.shape[1],
            height=image.shape[0],
            masked=not plan.is_global,
            box=list(plan.box),
            bucket=list(plan.bucket),
            grid=[gh, gw],
            repainted_tokens=int(repaint.sum()),
            cfg_text_scale=ts,
            cfg_image_scale=si,
            cfg_rescale=rescale,
            **loop.metadata(),
            **decoding.metadata(),
            image_only_vocab=d.image_only_vocab,
        )
        return ImageOutput(result, meta, codes=codes.numpy())

    def understand(
        self,
        turns: list[Turn],
        *,
        seed: int = 0,
        mask: np.ndarray | None = None,
        steps: int | None = None,
        gen_length: int | None = None,
        block_length: int | None = None,
        threshold: float | None = None,
        use_cache: bool | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        on_progress: OnProgress | None = None,
        on_text: OnText | None = None,
    ) -> str:
        """Answer the last user turn of a chat about images; the answer streams to `on_text`.

        With `mask`, the last user turn's first image is replaced by the masked region's crop.
        `gen_length` is the request's max_tokens; None takes the official default (`Defaults`).
        """
        if not turns or turns[-1].role != "user":
            raise BadInput("The chat must end with a question from the user.")
        if not turns[-1].text.strip() and not turns[-1].images:
            raise BadInput(NO_QUESTION)
        d = self.defaults
        _check(seed=seed, max_tokens=gen_length)
        loop = self._loop(
            steps, d.understand_steps, block_length=block_length, threshold=threshold,
            use_cache=use_cache, temperature=temperature, top_k=top_k, top_p=top_p,
        )  # fmt: skip
        ids = self.chat_ids(turns, mask, on_progress)
        B = loop.block_length
        room = self.backbone.config.max_position_embeddings - len(ids)
        length = min(_given(gen_length, d.understand_length), room - room % B)
        if length < min(B, _given(gen_length, B)):
            raise BadInput("The chat is too long for the model's context; start a new chat.")
        streamer = TextStreamer(self.tokenizer, on_text)
        out = self._write_text(
            ids, length, loop, seed, [],
            _both(_stage_steps(on_progress, STAGE_DENOISE), streamer.update),
        )  # fmt: skip
        answer = self.tokenizer.decode(out)
        streamer.finish(answer)
        return answer

    def chat_ids(self, turns: list[Turn], mask=None, on_progress=None) -> list[int]:
        """The prompt ids of a chat: every turn, and every image as its VQ codes."""
        turns = _with_region(turns, mask)
        n_images = sum(len(t.images) for t in turns)
        pieces = []
        for turn in turns:
            images = [
                self.tokenize(
                    vision.resize_for_understanding(check_image(im), n_images), on_progress
                )
                for im in turn.images
            ]
            pieces.append((turn.role, turn.text, images))
        return self.tokenizer.encode(text.understanding(pieces))

    def _check_context(self, length: int) -> None:
        if length > self.backbone.config.max_position_embeddings:
            raise BadInput("The request is longer than the model's context; use a smaller image.")


class TextStreamer:
    """Turns committed tokens into text deltas: only the contiguous committed prefix is shown,
    since a diffusion model commits tokens out of order."""

    def __init__(self, tokenizer: TextTokenizer, on_text: OnText | None):
        self.tokenizer, self.on_text = tokenizer, on_text
        self.shown = ""

    def update(self, report: StepReport) -> None:
        if self.on_text is None:
            return
        tokens = report.tokens.tolist()
        stops = {self.tokenizer.mask_id, self.tokenizer.eos_id, self.tokenizer.begin_image_id}
        prefix = next((tokens[:i] for i, t in enumerate(tokens) if t in stops), tokens)
        self._show(self.tokenizer.decode(prefix).rstrip("\ufffd"))  # wait for whole characters

    def finish(self, final: str) -> None:
        if self.on_text is not None:
            self._show(final)

    def _show(self, current: str) -> None:
        if current.startswith(self.shown) and len(current) > len(self.shown):
            self.on_text(current[len(self.shown) :])
            self.shown = current


def check_size(width: int, height: int) -> None:
    """256..1024 px per side in steps of 32 (which also bounds the aspect ratio at 4:1)."""
    for name, side in (("width", width), ("height", height)):
        if side is None:
            raise args.RULES[name].refuse(side)
        args.check(name, side)


def check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        raise BadInput("The image must be an RGB picture ([H, W, 3] pixels).")
    if image.dtype != np.uint8:
        raise BadInput("The image must have 8-bit channels; read it with vision.read_image.")
    if min(image.shape[:2]) < 1:
        raise BadInput("The image is empty.")
    return image


def need_text(value: str, sentence: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadInput(sentence)
    return value.strip()


def _with_region(turns: list[Turn], mask: np.ndarray | None) -> list[Turn]:
    if mask is None:
        return turns
    last = turns[-1]
    if not last.images:
        raise BadInput("A region question needs the image the mask was painted on.")
    region = masking.validate_mask(mask, last.images[0].shape)
    if not region.any():
        raise BadInput("The mask covers nothing; paint the region to ask about.")
    crop = masking.region_crop(last.images[0], region)
    return [*turns[:-1], Turn(last.role, last.text, (crop, *last.images[1:]))]


def _check(**values) -> None:
    for name, value in values.items():
        args.check(name, value)


def _report(on_progress: OnProgress | None, stage: str, step: int, total: int) -> None:
    if on_progress:
        on_progress(stage, step, total)


def _stage_steps(on_progress: OnProgress | None, stage: str):
    def on_step(report: StepReport) -> None:
        _report(on_progress, stage, report.step, report.total)

    return on_step


def _both(first, second):
    def on_step(report: StepReport) -> None:
        first(report)
        second(report)

    return on_step


def _rss_gib() -> float | None:
    """The process's resident memory where the OS tells it cheaply (Linux), else None."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 2**20
    return None
