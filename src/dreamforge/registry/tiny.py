"""Build a tiny, random-weight SDXL-architecture diffusers pipeline fully offline.

The result loads with ``StableDiffusionXLPipeline.from_pretrained`` and renders noise; it exists so tests
and demos can exercise the real SDXL code paths without downloading multi-gigabyte weights.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# What the API, the CLI and the folder's marker file say about a tiny model.
TINY_NOTE = "random weights: images are noise, for tests and demos only"
MARKER_FILE = "dreamforge-tiny.json"
MARKER: dict[str, Any] = {"tiny": True, "note": TINY_NOTE}

# The two encoders must differ in width: diffusers tells the CLIP-L and OpenCLIP-G halves of a single-file
# checkpoint apart by comparing positional-embedding widths against each model's config.
TE1_WIDTH = 32
TE2_WIDTH = 64
# Deliberately unlike TE2_WIDTH so a transposed or mis-split projection cannot go unnoticed.
TE2_PROJECTION = 48
# diffusers only recognises an SDXL base checkpoint if OpenCLIP block 9 exists.
TE2_LAYERS = 10
ADD_TIME_DIM = 8
# SDXL conditions on six micro-conditioning numbers (original size, crop offset, target size).
ADD_TIME_IDS = 6
MAX_TOKENS = 77

# A handful of merges keeps the BPE path honest (merged tokens get their own ids) while staying tiny.
_MERGES: tuple[tuple[str, str], ...] = (("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n</w>"))
_BOS = "<|startoftext|>"
_EOS = "<|endoftext|>"


def _byte_symbols() -> list[str]:
    """CLIP's byte-level alphabet: printable bytes keep their glyph, the rest move to U+0100 upwards."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1),
        *range(ord("\N{REGISTERED SIGN}"), ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1),
    ]
    kept = set(printable)
    remapped = [b for b in range(256) if b not in kept]
    # Order matters for id compatibility with real CLIP vocabularies: printable glyphs first, then the rest.
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(remapped))]


def build_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Return a minimal valid CLIP BPE vocabulary (token -> id) and its merge rules as pairs."""
    symbols = _byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(pair) for pair in _MERGES), _BOS, _EOS]
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise AssertionError("duplicate token in the tiny CLIP vocabulary")
    return vocab, list(_MERGES)


def _write_bpe_files(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    # The tokenizers backend wants merges as pairs, the on-disk format is "a b" lines.
    # Older transformers releases (and other tools) read the slow-tokenizer files, not tokenizer.json.
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def tiny_unet(block_out_channels: tuple[int, int] = (16, 32)) -> Any:
    """The tiny pipeline's SDXL-architecture UNet with random weights (seed torch first to fix them);
    wider `block_out_channels` make a bigger model of the same shape (bench/cold_warm.py)."""
    import importlib

    dif: Any = importlib.import_module("diffusers")
    return dif.UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=block_out_channels,
        layers_per_block=2,
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        cross_attention_dim=TE1_WIDTH + TE2_WIDTH,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=ADD_TIME_DIM,
        projection_class_embeddings_input_dim=TE2_PROJECTION + ADD_TIME_IDS * ADD_TIME_DIM,
        norm_num_groups=8,
    )


def save_pipeline(
    dest: Path, models: list[Any], tokenizers: list[Any], scheduler: Any, variant: str | None = None
) -> None:
    """Save SDXL's parts (VAE, both text encoders, UNet; both tokenizers) as a diffusers folder in `dest`."""
    import importlib

    dif: Any = importlib.import_module("diffusers")
    vae, text_encoder, text_encoder_2, unet = (model.eval() for model in models)
    tokenizer, tokenizer_2 = tokenizers
    pipe = dif.StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
    )
    pipe.save_pretrained(dest, safe_serialization=True, variant=variant)


def build_tiny_pipeline(dest: Path, *, seed: int = 0) -> Path:
    """Write a tiny random-weight SDXL pipeline (safetensors) to ``dest`` and return ``dest``.

    The same ``seed`` always produces bit-identical weights; the global torch RNG state is left untouched.
    """
    import importlib

    import torch

    from dreamforge.engines.torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    # diffusers and transformers ship partial annotations (untyped constructors, merges typed as str)
    # that do not match runtime behaviour; treat both as dynamic here.
    dif: Any = importlib.import_module("diffusers")
    tfm: Any = importlib.import_module("transformers")
    # save_pretrained draws "Writing model shards" bars that garble CLI output for a 4 MB model.
    tfm.utils.logging.disable_progress_bar()

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab()
    bos_id, eos_id = vocab[_BOS], vocab[_EOS]

    tokenizer = tfm.CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=MAX_TOKENS)
    # SDXL's second tokenizer pads with "!" rather than end-of-text; mirror that so padding bugs show up.
    tokenizer_2 = tfm.CLIPTokenizer(
        vocab=dict(vocab), merges=list(merges), pad_token="!", model_max_length=MAX_TOKENS
    )

    te1_config = tfm.CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TE1_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        hidden_act="quick_gelu",
        projection_dim=TE1_WIDTH,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
    )
    te2_config = tfm.CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TE2_WIDTH,
        intermediate_size=80,
        num_hidden_layers=TE2_LAYERS,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        hidden_act="gelu",
        projection_dim=TE2_PROJECTION,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=vocab["!"],
    )

    def seeded(offset: int) -> None:
        # One seed per component so resizing one model never reshuffles the others' weights.
        torch.manual_seed(seed * 1009 + offset)

    with torch.random.fork_rng(devices=[]):
        seeded(1)
        text_encoder = tfm.CLIPTextModel(te1_config)
        seeded(2)
        text_encoder_2 = tfm.CLIPTextModelWithProjection(te2_config)
        seeded(3)
        unet = tiny_unet()
        seeded(4)
        vae = dif.AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=64,
            scaling_factor=0.13025,
        )

    scheduler = dif.EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        use_karras_sigmas=False,
        timestep_spacing="leading",
        steps_offset=1,
    )

    save_pipeline(dest, [vae, text_encoder, text_encoder_2, unet], [tokenizer, tokenizer_2], scheduler)
    for name in ("tokenizer", "tokenizer_2"):
        _write_bpe_files(dest / name, vocab, merges)
    (dest / MARKER_FILE).write_text(json.dumps(MARKER, indent=2) + "\n", encoding="utf-8")
    return dest


# A real ESRGAN (RRDB) layout at a fraction of its width: spandrel detects it like RealESRGAN_x4plus.
TINY_UPSCALER_FILTERS = 8
TINY_UPSCALER_BLOCKS = 1


def build_tiny_upscaler(dest: Path, *, scale: int = 4, seed: int = 0) -> Path:
    """Write a random-weight ESRGAN upscaler of `scale` (2 or 4) to `dest` (`.safetensors`).

    Built from spandrel's own ESRGAN class, so its keys are those of a published ESRGAN file.
    """
    import torch
    from safetensors.torch import save_file

    from dreamforge.engines.upscale import import_spandrel

    import_spandrel()  # makes spandrel importable where torchvision's ops are not
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    net = ESRGAN(
        in_nc=3, out_nc=3, num_filters=TINY_UPSCALER_FILTERS, num_blocks=TINY_UPSCALER_BLOCKS, scale=scale
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tensors = {key: value.contiguous() for key, value in net.state_dict().items()}
    save_file(tensors, str(dest), metadata={"dreamforge": json.dumps(MARKER)})
    return dest
