"""checkpoint.py: finding model folders (plain and Hugging Face cache), one sentence per fault."""

import hashlib
import json
import os
import shutil
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.backbone import BackboneConfig, expected_shapes
from engine.checkpoint import (
    INDEX_NAME,
    ModelFolder,
    find_model_folder,
    read_backbone_config,
    tensor_index,
    validate_model_folder,
)
from engine.errors import BadCheckpoint
from engine.tiny import official_config_json, write_tiny_checkpoint

UNDERSTANDING = ("backbone", "tokenizer", "image_tokenizer")


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "LLaDA2.0-Uni")


@pytest.fixture
def model(tiny_source, tmp_path) -> Path:
    """A fresh copy of the tiny checkpoint that a test may break."""
    return Path(shutil.copytree(tiny_source, tmp_path / "LLaDA2.0-Uni"))


def shard_names(folder: Path) -> list[str]:
    return sorted(set(json.loads((folder / INDEX_NAME).read_text())["weight_map"].values()))


def bad(path, **kwargs) -> str:
    with pytest.raises(BadCheckpoint) as caught:
        validate_model_folder(path, **kwargs)
    message = str(caught.value)
    assert message.endswith(".") and "\n" not in message, message
    return message


def edit_json(path: Path, change) -> None:
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def first_weights(folder: Path) -> Path:
    return sorted(folder.glob("*.safetensors"))[0]


# A good folder


def test_good_folder_validates(model):
    assert validate_model_folder(model) == ModelFolder(model, None)
    assert validate_model_folder(str(model), parts=UNDERSTANDING).root == model


def test_config_and_tensor_index(model):
    config = read_backbone_config(model)
    assert config == BackboneConfig.from_dict(json.loads((model / "config.json").read_text()))
    tensors = tensor_index(model)
    assert set(tensors) == set(expected_shapes(config))
    info = tensors["model.layers.1.mlp.gate.weight"]
    assert info.dtype == "BF16"
    assert info.shape == (config.num_experts, config.hidden_size)
    assert info.file.name in shard_names(model)


def test_fused_expert_layout_is_accepted(model):
    config = read_backbone_config(model)
    for shard in shard_names(model):
        (model / shard).unlink()
    shapes = expected_shapes(config, fused_experts=True)
    weights = {name: torch.zeros(shape, dtype=torch.bfloat16) for name, shape in shapes.items()}
    save_file(weights, str(model / "model.safetensors"))
    (model / INDEX_NAME).unlink()
    validate_model_folder(model, parts=("backbone",))
    assert (
        tensor_index(model)["model.layers.1.mlp.experts.down_proj"].shape
        == shapes["model.layers.1.mlp.experts.down_proj"]
    )


def test_vision_tensors_in_root_shards_are_tolerated(model):
    add_tensor(model, "model.visual.patch_embed.proj.bias")
    validate_model_folder(model, parts=("backbone",))


def test_understanding_needs_no_decoder(model):
    shutil.rmtree(model / "decoder")
    shutil.rmtree(model / "decoder-turbo")
    shutil.rmtree(model / "vae")
    validate_model_folder(model, parts=UNDERSTANDING)


def test_either_decoder_will_do(model):
    shutil.rmtree(model / "decoder-turbo")
    validate_model_folder(model)
    assert "decoder-turbo/" in bad(model, parts=("decoder_turbo",))


def test_unknown_part_is_a_programming_error(model):
    with pytest.raises(ValueError, match="unknown model parts"):
        validate_model_folder(model, parts=("backbone", "lora"))


# Finding the folder


def test_missing_folder(tmp_path):
    assert "does not exist" in bad(tmp_path / "nowhere")


def test_file_instead_of_folder(model):
    assert "is a file" in bad(model / "config.json")


def test_folder_without_config(tmp_path):
    message = bad(tmp_path)
    assert "has no config.json" in message and "choose the folder" in message


# Hugging Face cache


def as_hf_cache(source: Path, hub: Path, revision: str) -> Path:
    """Lay `source` out as the hub library does: content in blobs/, relative links in snapshots/."""
    repo = hub / "models--inclusionAI--LLaDA2.0-Uni"
    snapshot = repo / "snapshots" / revision
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        relative = file.relative_to(source)
        blob = repo / "blobs" / hashlib.sha256(f"{revision}/{relative}".encode()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, blob)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return repo


REV_OLD, REV_NEW = "a" * 40, "b" * 40


@pytest.fixture
def hf_cache(tiny_source, tmp_path) -> Path:
    """A hub cache with two snapshots; refs/main names the older one."""
    repo = as_hf_cache(tiny_source, tmp_path / "hub", REV_OLD)
    as_hf_cache(tiny_source, tmp_path / "hub", REV_NEW)
    os.utime(repo / "snapshots" / REV_OLD, (1_000_000, 1_000_000))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REV_OLD)
    return repo


def test_hf_repo_folder_follows_refs_main(hf_cache):
    folder = validate_model_folder(hf_cache)
    assert folder == ModelFolder(hf_cache / "snapshots" / REV_OLD, REV_OLD)
    assert (folder.root / "config.json").is_symlink()


def test_hf_repo_folder_without_ref_takes_newest_snapshot(hf_cache):
    (hf_cache / "refs" / "main").unlink()
    assert find_model_folder(hf_cache).revision == REV_NEW


def test_hf_snapshot_and_hub_folders(hf_cache):
    assert find_model_folder(hf_cache / "snapshots" / REV_NEW).revision == REV_NEW
    assert find_model_folder(hf_cache.parent).revision == REV_OLD


def test_hf_snapshots_folder_itself(hf_cache):
    assert find_model_folder(hf_cache / "snapshots").revision == REV_OLD


def test_hf_ref_to_missing_snapshot(hf_cache):
    (hf_cache / "refs" / "main").write_text("c" * 40)
    assert "c" * 40 in bad(hf_cache)


def test_hf_dangling_link_is_an_incomplete_download(hf_cache):
    snapshot = hf_cache / "snapshots" / REV_OLD
    shard = shard_names(snapshot)[1]
    (snapshot / shard).resolve().unlink()
    message = bad(hf_cache)
    assert shard in message and "incomplete" in message


def test_hf_dangling_link_in_a_part_folder(hf_cache):
    weights = first_weights(hf_cache / "snapshots" / REV_OLD / "vae")
    weights.resolve().unlink()
    message = bad(hf_cache)
    assert f"vae/{weights.name}" in message and "incomplete" in message


# Backbone weights


def test_missing_shard(model):
    shard = shard_names(model)[1]
    (model / shard).unlink()
    message = bad(model)
    assert f"Shard {shard} is missing" in message and INDEX_NAME in message


def test_missing_shard_without_index(model):
    (model / INDEX_NAME).unlink()
    shard = shard_names_on_disk(model)[1]
    (model / shard).unlink()
    assert f"Shard {shard} is missing" in bad(model)


def shard_names_on_disk(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("model-*.safetensors"))


def test_no_backbone_weights(model):
    for shard in shard_names(model):
        (model / shard).unlink()
    (model / INDEX_NAME).unlink()
    assert "no backbone weights" in bad(model)


def test_truncated_shard(model):
    shard = model / shard_names(model)[2]
    size = shard.stat().st_size
    os.truncate(shard, size // 2)
    message = bad(model)
    assert f"{shard.name} in {model} is truncated (" in message and " of " in message


def test_a_broken_file_in_a_folder_quantize_wrote_says_to_quantize_again(model):
    """Downloading again cannot mend what `quantize` wrote; the sentence says what can."""
    shard = model / shard_names(model)[2]
    os.truncate(shard, shard.stat().st_size // 2)
    assert bad(model).endswith("download it again.")
    from engine import quant

    assert quant.MANIFEST == "quantization.json"  # the file checkpoint.remedy looks for
    (model / quant.MANIFEST).write_text("{}")
    message = bad(model)
    assert "is truncated" in message and "quantize the model again" in message
    assert "download" not in message


def test_shard_cut_inside_its_header(model):
    shard = model / shard_names(model)[0]
    os.truncate(shard, 100)
    assert f"{shard.name} in {model} is truncated" in bad(model)


def test_corrupt_header(model):
    shard = model / shard_names(model)[0]
    with shard.open("r+b") as file:
        file.seek(8)
        file.write(b"\x00garbage")
    assert f"{shard.name} in {model} has a corrupt safetensors header" in bad(model)


def test_absurd_header_length(model):
    shard = model / shard_names(model)[0]
    with shard.open("r+b") as file:
        file.write(struct.pack("<Q", 2**60))
    assert "corrupt safetensors header" in bad(model)


def test_trailing_bytes(model):
    shard = model / shard_names(model)[0]
    with shard.open("ab") as file:
        file.write(b"\0" * 100)
    message = bad(model)
    assert f"{shard.name} in {model} has 100 bytes more than its header" in message


def test_index_names_a_tensor_its_shard_lacks(model):
    first, second = shard_names(model)[:2]
    name = next(n for n, s in weight_map(model).items() if s == first)
    edit_json(model / INDEX_NAME, lambda raw: raw["weight_map"].update({name: second}))
    message = bad(model)
    assert name in message and second in message


def weight_map(folder: Path) -> dict[str, str]:
    return json.loads((folder / INDEX_NAME).read_text())["weight_map"]


def rewrite_shard(folder: Path, tensor: str, change) -> None:
    """Apply `change` to the tensors of the shard that holds `tensor`, and update the index."""
    shard = weight_map(folder).get(tensor, shard_names(folder)[-1])
    tensors = load_file(str(folder / shard))
    change(tensors)
    save_file(tensors, str(folder / shard))
    kept = {name: s for name, s in weight_map(folder).items() if s != shard}
    edit_json(
        folder / INDEX_NAME, lambda raw: raw.update(weight_map=kept | dict.fromkeys(tensors, shard))
    )


def add_tensor(folder: Path, name: str) -> None:
    rewrite_shard(folder, name, lambda tensors: tensors.update({name: torch.zeros(2)}))


def test_missing_tensor(model):
    name = "model.layers.1.mlp.gate.expert_bias"
    rewrite_shard(model, name, lambda tensors: tensors.pop(name))
    message = bad(model)
    assert "lacks 1 tensor" in message and name in message


def test_unexpected_tensor(model):
    add_tensor(model, "model.layers.1.mlp.extra_proj.weight")
    message = bad(model)
    assert "does not have" in message and "model.layers.1.mlp.extra_proj.weight" in message


def test_shape_disagrees_with_config(model):
    config = read_backbone_config(model)
    bigger = config.num_experts * 2
    edit_json(model / "config.json", lambda raw: raw.update(num_experts=bigger))
    message = bad(model)
    assert "model.layers.1.mlp.gate.weight" in message
    assert f"[{config.num_experts}, {config.hidden_size}]" in message
    assert f"[{bigger}, {config.hidden_size}]" in message


# config.json


def test_config_lacks_a_field(model):
    edit_json(model / "config.json", lambda raw: raw.pop("num_experts"))
    message = bad(model)
    assert "lacks the field 'num_experts'" in message and str(model) in message


def test_config_field_of_wrong_type(model):
    edit_json(model / "config.json", lambda raw: raw.update(num_experts="many"))
    assert "num_experts" in bad(model)


def test_config_not_json(model):
    (model / "config.json").write_text("{ not json")
    assert "config.json" in bad(model) and "not valid JSON" in bad(model)


def test_some_other_model(model):
    qwen = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
    edit_json(model / "config.json", lambda raw: raw.update(qwen))
    message = bad(model)
    assert f"{model} holds a Qwen2ForCausalLM model, not LLaDA2.0-Uni" in message


def test_config_without_architecture(model):
    edit_json(model / "config.json", lambda raw: [raw.pop("architectures"), raw.pop("model_type")])
    assert "names no architecture" in bad(model)


def test_text_only_llada(model):
    edit_json(model / "config.json", lambda raw: raw.pop("image_token_offset"))
    assert "text-only" in bad(model)


# Other parts


def test_missing_tokenizer(model):
    (model / "tokenizer.json").unlink()
    assert "tokenizer.json" in bad(model)
    validate_model_folder(model, parts=("backbone",))


@pytest.mark.parametrize("part", ["image_tokenizer", "vae"])
def test_missing_part_folder(model, part):
    shutil.rmtree(model / part)
    assert f"no {part}/ folder" in bad(model)


def test_missing_both_decoders(model):
    shutil.rmtree(model / "decoder")
    shutil.rmtree(model / "decoder-turbo")
    message = bad(model)
    assert "decoder/" in message and "decoder-turbo/" in message


def test_part_without_config(model):
    (model / "decoder" / "config.json").unlink()
    assert "decoder/ folder" in bad(model) and "config.json" in bad(model)


def test_missing_sigvq_embedding(model):
    (model / "image_tokenizer" / "sigvq_embedding.pt").unlink()
    assert "image_tokenizer/sigvq_embedding.pt" in bad(model)
    validate_model_folder(model, parts=UNDERSTANDING)


def test_truncated_sigvq_embedding(model):
    path = model / "image_tokenizer" / "sigvq_embedding.pt"
    os.truncate(path, path.stat().st_size // 2)
    assert "sigvq_embedding.pt" in (message := bad(model)) and "truncated" in message


def test_truncated_part_weights(model):
    weights = first_weights(model / "image_tokenizer")
    os.truncate(weights, weights.stat().st_size - 1)
    assert f"image_tokenizer/{weights.name} in {model} is truncated" in bad(model)


# Cheapness: headers and sizes only


def test_tensor_data_is_never_read(model):
    for shard in shard_names(model):
        path = model / shard
        (length,) = struct.unpack("<Q", path.read_bytes()[:8])
        with path.open("r+b") as file:
            file.seek(8 + length)
            file.write(b"\xff" * (path.stat().st_size - 8 - length))
    validate_model_folder(model)


def write_header_only(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """A bf16 safetensors file whose data region is a hole: the right size, no bytes written."""
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * int(torch.tensor(shape).prod()) if shape else 2
        header[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with path.open("wb") as file:
        file.write(struct.pack("<Q", len(text)) + text)
        file.truncate(8 + len(text) + offset)


def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def test_real_sized_folder_validates_in_well_under_a_second(tmp_path):
    """The full 20-layer, 256-expert layout (about 32 GB of sparse files) in 13 shards."""
    config = BackboneConfig.real()
    (tmp_path / "config.json").write_text(json.dumps(official_config_json(config)))
    shapes = list(expected_shapes(config).items())
    per, weight_map = -(-len(shapes) // 13), {}
    for i in range(13):
        shard = f"model-{i + 1:05d}-of-00013.safetensors"
        write_header_only(tmp_path / shard, dict(shapes[i * per : (i + 1) * per]))
        weight_map |= {name: shard for name, _ in shapes[i * per : (i + 1) * per]}
    (tmp_path / INDEX_NAME).write_text(json.dumps({"weight_map": weight_map}))
    elapsed = min(timed(validate_model_folder, tmp_path, parts=("backbone",)) for _ in range(2))
    assert elapsed < 1.0, f"validating took {elapsed:.2f} s"
    assert sum((tmp_path / s).stat().st_size for s in set(weight_map.values())) > 30e9
