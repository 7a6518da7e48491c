"""Convert a diffusers SDXL folder into one original-layout (Stability "sgm" / A1111) checkpoint.

diffusers only converts original -> diffusers; this module is the reverse, producing exactly the key names and
tensor shapes that ``StableDiffusionXLPipeline.from_single_file`` consumes.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    StateDict = dict[str, torch.Tensor]

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".onnx", ".h5", ".gguf")
_WEIGHT_INDEX_SUFFIX = ".index.json"

_UNET_RESNET_RENAMES = (
    ("norm1.", "in_layers.0."),
    ("conv1.", "in_layers.2."),
    ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."),
    ("conv2.", "out_layers.3."),
    ("conv_shortcut.", "skip_connection."),
)
_VAE_RESNET_RENAMES = (("conv_shortcut.", "nin_shortcut."),)
_VAE_ATTENTION_RENAMES = (
    ("group_norm.", "norm."),
    ("to_q.", "q."),
    ("to_k.", "k."),
    ("to_v.", "v."),
    ("to_out.0.", "proj_out."),
)
_OPEN_CLIP_LAYER_RENAMES = (
    ("self_attn.out_proj.", "attn.out_proj."),
    ("layer_norm1.", "ln_1."),
    ("layer_norm2.", "ln_2."),
    ("mlp.fc1.", "mlp.c_fc."),
    ("mlp.fc2.", "mlp.c_proj."),
)


class _Renamer:
    """Prefix table: each diffusers prefix maps to an original prefix plus a rule for the remaining suffix."""

    def __init__(self) -> None:
        self._rules: list[tuple[str, str, tuple[tuple[str, str], ...]]] = []

    def add(self, source: str, target: str, renames: tuple[tuple[str, str], ...] = ()) -> None:
        self._rules.append((source, target, renames))

    def rename(self, key: str) -> str | None:
        # Longest prefix wins so "mid_block.resnets.1." can never be claimed by a shorter, broader rule.
        best: tuple[str, str, tuple[tuple[str, str], ...]] | None = None
        for rule in self._rules:
            if key.startswith(rule[0]) and (best is None or len(rule[0]) > len(best[0])):
                best = rule
        if best is None:
            return None
        source, target, renames = best
        # Renames match whole dotted segments anywhere in the suffix (VAE rules keep the layer index there).
        suffix = "." + key[len(source) :]
        for old, new in renames:
            if "." + old in suffix:
                suffix = suffix.replace("." + old, "." + new, 1)
                break
        return target + suffix[1:]


def _apply(
    renamer: _Renamer,
    state: StateDict,
    prefix: str,
    component: str,
    reshape: Callable[[str, torch.Tensor], torch.Tensor] | None = None,
) -> StateDict:
    out: StateDict = {}
    unmapped: list[str] = []
    for key, tensor in state.items():
        new_key = renamer.rename(key)
        if new_key is None:
            unmapped.append(key)
            continue
        out[prefix + new_key] = reshape(new_key, tensor) if reshape else tensor
    # Silently dropping weights would yield a checkpoint that loads with random holes; refuse instead.
    if unmapped:
        raise ValueError(f"{component}: {len(unmapped)} keys have no original-layout name: {unmapped[:5]}")
    return out


def _per_block(value: Any, count: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * count
    values = [int(v) for v in value]
    if len(values) != count:
        raise ValueError(f"{name} has {len(values)} entries for {count} blocks")
    return values


def _unet_to_original(state: StateDict, config: dict[str, Any]) -> StateDict:
    down_types: list[str] = list(config["down_block_types"])
    up_types: list[str] = list(config["up_block_types"])
    levels = len(down_types)
    if len(up_types) != levels:
        raise ValueError("UNet has a different number of down and up blocks")
    if config.get("class_embed_type") is not None or config.get("encoder_hid_dim") is not None:
        raise ValueError("only SDXL-style UNets (text_time additional embedding) are supported")
    down_layers = _per_block(config["layers_per_block"], levels, "layers_per_block")
    # Up blocks mirror the down levels in reverse, each with one extra resnet consuming a skip connection.
    up_layers = [n + 1 for n in reversed(down_layers)]

    r = _Renamer()
    r.add("time_embedding.linear_1.", "time_embed.0.")
    r.add("time_embedding.linear_2.", "time_embed.2.")
    r.add("add_embedding.linear_1.", "label_emb.0.0.")
    r.add("add_embedding.linear_2.", "label_emb.0.2.")
    r.add("conv_in.", "input_blocks.0.0.")
    r.add("conv_norm_out.", "out.0.")
    r.add("conv_out.", "out.2.")

    # sgm flattens the encoder into input_blocks: one entry per resnet(+attention), one per downsampler.
    block = 1
    for level, block_type in enumerate(down_types):
        for layer in range(down_layers[level]):
            r.add(f"down_blocks.{level}.resnets.{layer}.", f"input_blocks.{block}.0.", _UNET_RESNET_RENAMES)
            if "CrossAttn" in block_type:
                r.add(f"down_blocks.{level}.attentions.{layer}.", f"input_blocks.{block}.1.")
            block += 1
        if level < levels - 1:
            r.add(f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{block}.0.op.")
            block += 1

    # Mid block alternates resnet / attention / resnet ...
    mid_resnets = {k.split(".")[2] for k in state if k.startswith("mid_block.resnets.")}
    for index in range(len(mid_resnets)):
        r.add(f"mid_block.resnets.{index}.", f"middle_block.{2 * index}.", _UNET_RESNET_RENAMES)
        r.add(f"mid_block.attentions.{index}.", f"middle_block.{2 * index + 1}.")

    block = 0
    for level, block_type in enumerate(up_types):
        has_attention = "CrossAttn" in block_type
        for layer in range(up_layers[level]):
            r.add(f"up_blocks.{level}.resnets.{layer}.", f"output_blocks.{block}.0.", _UNET_RESNET_RENAMES)
            if has_attention:
                r.add(f"up_blocks.{level}.attentions.{layer}.", f"output_blocks.{block}.1.")
            is_last_layer = layer == up_layers[level] - 1
            if is_last_layer and level < levels - 1:
                # The upsampler sits after the attention module when there is one.
                slot = 2 if has_attention else 1
                r.add(f"up_blocks.{level}.upsamplers.0.conv.", f"output_blocks.{block}.{slot}.conv.")
            block += 1

    return _apply(r, state, UNET_PREFIX, "unet")


def _vae_to_original(state: StateDict, config: dict[str, Any]) -> StateDict:
    levels = len(config["down_block_types"])
    if len(config["up_block_types"]) != levels:
        raise ValueError("VAE has a different number of encoder and decoder blocks")

    r = _Renamer()
    for part in ("encoder", "decoder"):
        r.add(f"{part}.conv_in.", f"{part}.conv_in.")
        r.add(f"{part}.conv_out.", f"{part}.conv_out.")
        r.add(f"{part}.conv_norm_out.", f"{part}.norm_out.")
        r.add(f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION_RENAMES)
        mid_resnets = {k.split(".")[3] for k in state if k.startswith(f"{part}.mid_block.resnets.")}
        for index in range(len(mid_resnets)):
            r.add(f"{part}.mid_block.resnets.{index}.", f"{part}.mid.block_{index + 1}.", _VAE_RESNET_RENAMES)
    r.add("quant_conv.", "quant_conv.")
    r.add("post_quant_conv.", "post_quant_conv.")

    for level in range(levels):
        r.add(f"encoder.down_blocks.{level}.resnets.", f"encoder.down.{level}.block.", _VAE_RESNET_RENAMES)
        r.add(f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.down.{level}.downsample.")
        # The original decoder numbers its levels from the lowest resolution up; diffusers from the top.
        original = levels - 1 - level
        r.add(f"decoder.up_blocks.{level}.resnets.", f"decoder.up.{original}.block.", _VAE_RESNET_RENAMES)
        r.add(f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.up.{original}.upsample.")

    def as_conv(new_key: str, tensor: torch.Tensor) -> torch.Tensor:
        # The original mid attention uses 1x1 convolutions where diffusers uses linear layers.
        is_attention_weight = ".mid.attn_1." in new_key and new_key.endswith(
            ("q.weight", "k.weight", "v.weight", "proj_out.weight")
        )
        if is_attention_weight and tensor.ndim == 2:
            return tensor[:, :, None, None].contiguous()
        return tensor

    return _apply(r, state, VAE_PREFIX, "vae", as_conv)


def _strip_text_model(key: str) -> str:
    # transformers >= 5.6 flattened CLIPTextModel (no "text_model." level); accept both spellings.
    return key.removeprefix("text_model.")


def _clip_l_to_original(state: StateDict) -> StateDict:
    return {CLIP_L_PREFIX + _strip_text_model(key): tensor for key, tensor in state.items()}


def _open_clip_to_original(state: StateDict, config: dict[str, Any]) -> StateDict:
    import torch

    flat = {_strip_text_model(key): tensor for key, tensor in state.items()}
    out: StateDict = {}
    consumed: set[str] = set()

    def take(key: str) -> torch.Tensor:
        consumed.add(key)
        return flat[key]

    out[OPEN_CLIP_PREFIX + "token_embedding.weight"] = take("embeddings.token_embedding.weight")
    out[OPEN_CLIP_PREFIX + "positional_embedding"] = take("embeddings.position_embedding.weight")
    out[OPEN_CLIP_PREFIX + "ln_final.weight"] = take("final_layer_norm.weight")
    out[OPEN_CLIP_PREFIX + "ln_final.bias"] = take("final_layer_norm.bias")
    # OpenCLIP multiplies x @ text_projection, so it stores the transpose of a Linear weight.
    out[OPEN_CLIP_PREFIX + "text_projection"] = take("text_projection.weight").T.contiguous()

    for layer in range(int(config["num_hidden_layers"])):
        source = f"encoder.layers.{layer}."
        target = f"{OPEN_CLIP_PREFIX}transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            # nn.MultiheadAttention keeps q, k and v as one fused projection, stacked in that order.
            parts = [take(f"{source}self_attn.{name}_proj.{kind}") for name in ("q", "k", "v")]
            out[f"{target}attn.in_proj_{kind}"] = torch.cat(parts, dim=0).contiguous()
        for old, new in _OPEN_CLIP_LAYER_RENAMES:
            for kind in ("weight", "bias"):
                out[f"{target}{new}{kind}"] = take(f"{source}{old}{kind}")

    leftover = sorted(set(flat) - consumed)
    if leftover:
        raise ValueError(f"text_encoder_2: no original-layout mapping for {leftover[:5]}")
    return out


def _read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def _load_component(folder: Path) -> StateDict:
    from safetensors.torch import load_file

    for name in ("diffusion_pytorch_model", "model"):
        single = folder / f"{name}.safetensors"
        if single.is_file():
            loaded: StateDict = load_file(str(single))
            return loaded
        index = folder / f"{name}.safetensors{_WEIGHT_INDEX_SUFFIX}"
        if index.is_file():
            merged: StateDict = {}
            for shard in sorted(set(_read_json(index)["weight_map"].values())):
                merged.update(load_file(str(folder / shard)))
            return merged
    raise FileNotFoundError(f"no safetensors weights in {folder}")


def write_single_file(diffusers_dir: Path, dest: Path) -> Path:
    """Write the unet, vae and both text encoders of a diffusers SDXL folder as one original-layout file.

    Returns ``dest`` (a ``.safetensors`` path); tensors are copied bit-for-bit, only names and shapes change.
    """
    from safetensors.torch import save_file

    source = Path(diffusers_dir)
    dest = Path(dest)
    checkpoint: StateDict = {}
    parts: Iterable[StateDict] = (
        _unet_to_original(_load_component(source / "unet"), _read_json(source / "unet" / "config.json")),
        _vae_to_original(_load_component(source / "vae"), _read_json(source / "vae" / "config.json")),
        _clip_l_to_original(_load_component(source / "text_encoder")),
        _open_clip_to_original(
            _load_component(source / "text_encoder_2"), _read_json(source / "text_encoder_2" / "config.json")
        ),
    )
    for part in parts:
        overlap = checkpoint.keys() & part.keys()
        if overlap:
            raise ValueError(f"duplicate original-layout keys: {sorted(overlap)[:5]}")
        checkpoint.update(part)

    dest.parent.mkdir(parents=True, exist_ok=True)
    # safetensors refuses views that share storage; give every tensor its own contiguous buffer.
    owned = {key: tensor.contiguous().clone() for key, tensor in checkpoint.items()}
    save_file(owned, str(dest), metadata={"format": "pt"})
    return dest


def copy_config_tree(diffusers_dir: Path, dest: Path) -> Path:
    """Copy only the non-weight files (model_index.json, configs, tokenizers) of a diffusers folder.

    The result is what ``from_single_file(..., config=dest, local_files_only=True)`` needs to load offline.
    """
    source = Path(diffusers_dir)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    model_index = source / "model_index.json"
    shutil.copy2(model_index, dest / model_index.name)

    components = [
        name
        for name, value in _read_json(model_index).items()
        if not name.startswith("_") and isinstance(value, list) and value and value[0] is not None
    ]
    for name in components:
        folder = source / name
        if not folder.is_dir():
            continue
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            # Shard indexes point at weights that are not copied; leaving them would mislead loaders.
            if path.name.endswith(_WEIGHT_SUFFIXES) or path.name.endswith(_WEIGHT_INDEX_SUFFIX):
                continue
            target = dest / name / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return dest
