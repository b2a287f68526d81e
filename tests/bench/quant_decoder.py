"""The decoder transformer at int8 on the CPU: storing it with `quantize --decoder-bits 8`, and
three ways of loading it, each in a fresh process for honest peak memory.

    python -m tests.bench.quant_decoder [--layers 1] [--refiners 1] [--folder DIR]

A real-width transformer (dim 3840, 30 heads, FFN 10240, caption width 4096; facts §4) with
`--layers` main blocks and `--refiners` blocks in each refiner, random bf16 weights under the
official names, is written once. Then, each in its own process:
  load_bf16_then_quantize  the old path: the bf16 transformer whole, then quant.quantize_loaded
  stream_from_bf16         load_dit_quantized on the bf16 folder: quantized as each tensor is read
  write_int8_folder        engine/quantize_decoder.py: the int8 copy, tensor by tensor
  load_stored_int8         load_dit_quantized on the int8 copy: no quantizing
Each reports seconds, the peak resident set (ru_maxrss: it counts the mapped file's pages read,
which the kernel can drop) and the peak anonymous memory (RssAnon, sampled every 5 ms: what the
process itself holds). Weights in bf16, as on a GPU. The last line printed is one JSON object.
"""

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

REAL_DIT = {
    "_class_name": "ZImageTransformer2DModel",
    "all_patch_size": [2],
    "all_f_patch_size": [1],
    "in_channels": 16,
    "dim": 3840,
    "n_layers": 30,
    "n_refiner_layers": 2,
    "n_heads": 30,
    "n_kv_heads": 30,
    "norm_eps": 1e-5,
    "qk_norm": True,
    "cap_feat_dim": 4096,
    "rope_theta": 256.0,
    "t_scale": 1000.0,
    "axes_dims": [32, 48, 48],
    "axes_lens": [1536, 512, 512],
}
CAPTION_WIDTH = 4096
MODES = ("load_bf16_then_quantize", "stream_from_bf16", "write_int8_folder", "load_stored_int8")


def write_decoder(root: Path, layers: int, refiners: int) -> Path:
    """root/decoder-turbo/{config.json, model.safetensors}: random bf16, official names."""
    from safetensors.torch import save_file

    from engine.decoder import build_dit, dit_config

    folder = root / "decoder-turbo"
    folder.mkdir(parents=True)
    config = REAL_DIT | {"n_layers": layers, "n_refiner_layers": refiners}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    with torch.device("meta"):
        dit = build_dit(dit_config(config, CAPTION_WIDTH))
    generator = torch.Generator().manual_seed(0)
    state = {}
    for key, meta in dit.state_dict().items():
        name = key.replace("cap_embedder.", "semantic_embedder.", 1)
        tensor = torch.empty(meta.shape, dtype=torch.bfloat16)
        state[name] = tensor.normal_(0, 0.02, generator=generator)
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


class AnonPeak:
    """The largest RssAnon seen while it runs, sampled from /proc/self/status."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            time.sleep(0.005)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())


def rss_anon() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_mode(mode: str, root: Path) -> dict:
    """One measurement, in this (fresh) process."""
    from engine import quant, quantize_decoder
    from engine.decoder import load_dit, load_dit_quantized

    source, stored = root / "decoder-turbo", root / "int8" / "decoder-turbo"
    before = rss_anon()
    start = time.perf_counter()
    with AnonPeak() as anon:
        if mode == "load_bf16_then_quantize":
            model = quant.quantize_loaded(load_dit(source, CAPTION_WIDTH, "cpu", torch.bfloat16), 8)
        elif mode == "stream_from_bf16":
            model = load_dit_quantized(source, CAPTION_WIDTH, "cpu", torch.bfloat16)
        elif mode == "write_int8_folder":
            files = quantize_decoder.plan(root)
            quantize_decoder.write(root / "int8", files, "cpu", lambda item: lambda read: None)
            shutil.copy(source / "config.json", stored / "config.json")
            model = None
        else:
            model = load_dit_quantized(stored, CAPTION_WIDTH, "cpu", torch.bfloat16)
    seconds = time.perf_counter() - start
    result = {
        "mode": mode,
        "seconds": round(seconds, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
        "peak_anon_gb": round((anon.peak - before) / 1e9, 2),
    }
    if model is not None:
        result["model_gb"] = round(quant.weight_bytes(model) / 1e9, 2)
        layer = model.layers[0].feed_forward.w1
        result["w1_qweight_sum"] = int(layer.qweight.sum())  # equal across modes: same int8
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--refiners", type=int, default=1)
    parser.add_argument("--folder", type=Path, help="where to write (default: a temporary one)")
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)  # a child process
    options = parser.parse_args()
    if options.mode:
        print(json.dumps(run_mode(options.mode, options.folder)))
        return
    with tempfile.TemporaryDirectory(dir=options.folder) as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        source = write_decoder(root, options.layers, options.refiners)
        print(f"wrote the bf16 transformer in {time.perf_counter() - start:.1f} s")
        results = {}
        for mode in MODES:
            child = [sys.executable, "-m", "tests.bench.quant_decoder", "--mode", mode]
            out = subprocess.run([*child, "--folder", str(root)], capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{mode} failed:\n{out.stderr}")
            results[mode] = json.loads(out.stdout.splitlines()[-1])
            print(json.dumps(results[mode]))
        bf16_bytes = (source / "model.safetensors").stat().st_size
        int8_bytes = (root / "int8" / "decoder-turbo" / "model.safetensors").stat().st_size
    sums = {r["w1_qweight_sum"] for r in results.values() if "w1_qweight_sum" in r}
    print(
        json.dumps(
            {
                "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, CPU",
                "layers": options.layers,
                "refiners": options.refiners,
                "file_bf16_gb": round(bf16_bytes / 1e9, 2),
                "file_int8_gb": round(int8_bytes / 1e9, 2),
                "same_int8_weights": len(sums) == 1,
                **{
                    mode: {k: v for k, v in r.items() if k != "mode"} for mode, r in results.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
