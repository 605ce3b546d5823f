"""Build tiny random-weight LLaVA-family checkpoints offline, in the real transformers classes, for tests.

Each is a save_pretrained directory: float32 safetensors, its own byte-level BPE tokenizer, processor, chat template.
Geometry "tiny" (the default) uses 32 px images and 16 image tokens; geometry "real" keeps the small weights but
copies the vision input side, patch, anyres pinpoints, feature layers and processor settings of the family's
public checkpoint, so an image costs as many tokens and pixel bytes as with the real model (576 for LLaVA-1.5).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llava_batch.pipeline.families import FAMILIES
from llava_batch.pipeline.families.prompt_formats import FAMILY_FORMATS, chat_template

logger = logging.getLogger(__name__)


IMAGE_TOKEN = "<image>"
# Ids 0-4 in this order in every tiny tokenizer; the ChatML (Qwen2) one adds <|im_start|> = 5, <|im_end|> = 6.
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN)
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")
VOCAB_SIZE = 384  # 256 byte symbols + the special tokens + about 120 merges

# Vision tower input side and patch: (32 / 8) ** 2 = 16 patches, so 16 image tokens per image in the
# fixed-resolution families (CLIP's CLS is dropped by the "default" strategy; SigLIP has none).
IMAGE_SIZE = 32
PATCH_SIZE = 8
# LLaVA-NeXT anyres resolutions (height, width): multiples of IMAGE_SIZE, so each one tiles into whole crops.
GRID_PINPOINTS = [[32, 64], [64, 32], [64, 64]]
TEXT_HIDDEN = 64
VISION_HIDDEN = 32
VISION_LAYERS = 2
# VipLLaVA concatenates the vision layers (-2, -5, -8, -11, 6) by default, which needs 12 layers. Keeping the
# default instead of e.g. [-2, -1] on a 2-layer tower matters across versions: transformers 5.17 names the field
# vision_feature_layers and 5.2x vision_feature_layer, and each reads the other's name as unknown (so default).
VIPLLAVA_VISION_LAYERS = 12
# Larger than the usual 0.02 so that greedy outputs of random weights depend on the image and the prompt
# instead of repeating one token.
INITIALIZER_RANGE = 0.1
METADATA_FILE = "tiny_model.json"
GEOMETRIES = ("tiny", "real")
# Real geometry: positions enough for LLaVA-NeXT's largest anyres image (about 2,900 tokens) plus the prompt.
REAL_MAX_POSITIONS = 4096

# A few lines of English, and the prompt formats' words, to train the BPE merges on.
_CORPUS = """\
A photo of a red stop sign on a street corner next to a tall building.
Two cats are sleeping on a pink blanket; a remote control lies beside them.
The image shows a snowman in a field with trees and a blue sky behind it.
What is shown in this image? Describe the image in more details.
There is a dog running on the beach near the water, and a person is walking behind it.
The chart compares the scores of several models on many benchmarks.
A man rides a bicycle down the road while a bus waits at the traffic light.
A bowl of fruit with apples, oranges and bananas sits on the wooden kitchen table.
The picture is dark and blurry, but a small white boat can be seen on the lake.
Write a short caption for this picture. Answer the question using a single word or phrase.
A chat between a curious human and an artificial intelligence assistant.
The assistant gives helpful, detailed, and polite answers to the human's questions.
USER: ASSISTANT: [INST] [/INST] ###Human: ###Assistant: system user assistant
USER: ASSISTANT: [INST] [/INST] ###Human: ###Assistant: system user assistant
"""


@dataclass(frozen=True)
class _RealGeometry:
    """What a family's public checkpoint fixes about images; the weights stay tiny (hidden sizes, layer count)."""

    checkpoint: str  # the hub repo whose config.json / preprocessor_config.json the values come from
    image_size: int
    patch_size: int
    # Layers built in the tiny tower: enough for every index the feature-layer settings name.
    vision_layers: int
    grid_pinpoints: tuple[tuple[int, int], ...] | None = None  # LLaVA-NeXT anyres (height, width)
    text_model_type: str | None = None  # None: the family's tiny text model type


# Values from the public config.json and preprocessor_config.json / processor_config.json of each hub repo
# (read through copies of those files; the hub itself is not reachable from here):
# - llava-hf/llava-1.5-7b-hf: vision_config clip_vision_model image_size 336, patch_size 14, 24 layers;
#   vision_feature_layer -2, vision_feature_select_strategy "default"; CLIPImageProcessor shortest_edge 336,
#   crop 336x336; processor patch_size 14, num_additional_image_tokens 1 -> (336 / 14) ** 2 = 576 image tokens.
# - llava-hf/llava-v1.6-mistral-7b-hf: the same CLIP ViT-L/14 at 336 px, vision_feature_layer -2, "default";
#   image_grid_pinpoints [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]] (config and
#   LlavaNextImageProcessor alike); text model mistral.
# - llava-hf/vip-llava-7b-hf: CLIP ViT-L/14 at 336 px (576 tokens), vision_feature_layers [-2, -5, -8, -11, 6]
#   (VipLlavaConfig's default, which the tiny build keeps, see VIPLLAVA_VISION_LAYERS; vip-llava-13b-hf's
#   config.json spells the list out, the 7b one leaves it to that default).
# - llava-hf/llava-interleave-qwen-0.5b-hf: siglip_vision_model image_size 384, patch_size 14 (26 layers,
#   vision_use_head false), vision_feature_layer -1, vision_feature_select_strategy "full"; SiglipImageProcessor
#   384x384; processor num_additional_image_tokens 0 -> 27 * 27 = 729 image tokens; text model qwen2.
REAL_PATCH_SIZE = 14
_LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


@dataclass(frozen=True)
class _FamilySpec:
    model_class: str
    processor_class: str
    image_processor_class: str  # the PIL one; see _image_processor
    vision_model_type: str
    text_model_type: str
    vision_layers: int
    # What the processor must know to expand one <image> into as many tokens as the model has features:
    # tokens the vision tower adds besides the patches (CLIP's CLS), and whether the model drops them.
    num_additional_image_tokens: int
    vision_feature_select_strategy: str
    # None: the model class's default (VipLlavaConfig has no strategy field and always drops CLS).
    vision_feature_layer: int | None
    real: _RealGeometry  # `geometry="real"`: the public checkpoint's image geometry


_SPECS: dict[str, _FamilySpec] = {
    "llava": _FamilySpec(
        model_class="LlavaForConditionalGeneration",
        processor_class="LlavaProcessor",
        image_processor_class="CLIPImageProcessor",
        vision_model_type="clip_vision_model",
        text_model_type="llama",
        vision_layers=VISION_LAYERS,
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        real=_RealGeometry("llava-hf/llava-1.5-7b-hf", 336, REAL_PATCH_SIZE, vision_layers=VISION_LAYERS),
    ),
    "llava_next": _FamilySpec(
        model_class="LlavaNextForConditionalGeneration",
        processor_class="LlavaNextProcessor",
        image_processor_class="LlavaNextImageProcessor",
        vision_model_type="clip_vision_model",
        text_model_type="llama",
        vision_layers=VISION_LAYERS,
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        real=_RealGeometry(
            "llava-hf/llava-v1.6-mistral-7b-hf",
            336,
            REAL_PATCH_SIZE,
            vision_layers=VISION_LAYERS,
            grid_pinpoints=_LLAVA_NEXT_PINPOINTS,
            text_model_type="mistral",
        ),
    ),
    "vipllava": _FamilySpec(
        model_class="VipLlavaForConditionalGeneration",
        processor_class="LlavaProcessor",
        image_processor_class="CLIPImageProcessor",
        vision_model_type="clip_vision_model",
        text_model_type="llama",
        vision_layers=VIPLLAVA_VISION_LAYERS,
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
        vision_feature_layer=None,
        real=_RealGeometry(
            "llava-hf/vip-llava-7b-hf", 336, REAL_PATCH_SIZE, vision_layers=VIPLLAVA_VISION_LAYERS
        ),
    ),
    # LLaVA-Interleave: SigLIP has no CLS token, so the model keeps every feature ("full").
    "llava_interleave": _FamilySpec(
        model_class="LlavaForConditionalGeneration",
        processor_class="LlavaProcessor",
        image_processor_class="SiglipImageProcessor",
        vision_model_type="siglip_vision_model",
        text_model_type="qwen2",
        vision_layers=VISION_LAYERS,
        num_additional_image_tokens=0,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        real=_RealGeometry(
            "llava-hf/llava-interleave-qwen-0.5b-hf", 384, REAL_PATCH_SIZE, vision_layers=VISION_LAYERS
        ),
    ),
}


def _family_spec(family: str) -> _FamilySpec:
    if family not in _SPECS:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {', '.join(FAMILIES)}")
    return _SPECS[family]


def build_tokenizer(chatml: bool = False, extra_corpus: str = "") -> Any:
    """A byte-level BPE fast tokenizer trained on the built-in corpus: offline, deterministic, a few ms.

    Llama-style (chatml=False): adds <s> in front, ends with </s>. Qwen2-style: no BOS, ends with <|im_end|>.
    `extra_corpus` (lines of text) is added to the corpus, so its frequent words get merges of their own.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS) + (list(CHATML_TOKENS) if chatml else []),
        # Every byte gets a symbol, so no text ever maps to <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS.splitlines() + extra_corpus.splitlines(), trainer=trainer)
    if not chatml:
        bos_id = tokenizer.token_to_id("<s>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="<unk>",
        bos_token=None if chatml else "<s>",
        eos_token="<|im_end|>" if chatml else "</s>",
        pad_token="<pad>",
        # Makes tokenizer.image_token / image_token_id exist, which the processors read.
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        clean_up_tokenization_spaces=False,
    )


def _vision_config(
    spec: _FamilySpec,
    hidden: int = VISION_HIDDEN,
    layers: int | None = None,
    image_size: int = IMAGE_SIZE,
    patch_size: int = PATCH_SIZE,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_type": spec.vision_model_type,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": spec.vision_layers if layers is None else layers,
        "num_attention_heads": 4,
        "image_size": image_size,
        "patch_size": patch_size,
        "initializer_range": INITIALIZER_RANGE,
    }
    if spec.vision_model_type == "clip_vision_model":
        config["projection_dim"] = hidden
    return config


def _text_config(
    spec: _FamilySpec,
    tokenizer: Any,
    hidden: int = TEXT_HIDDEN,
    layers: int = 2,
    model_type: str | None = None,
    max_positions: int = 512,
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_type": model_type or spec.text_model_type,
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": max_positions,
        "initializer_range": INITIALIZER_RANGE,
        # Tied input/output embeddings with random weights make the model repeat one token.
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if config["model_type"] == "mistral":
        # llava-v1.6-mistral-7b-hf's text_config has sliding_window null (full attention), not Mistral's 4096.
        config["sliding_window"] = None
    return config


def grid_pinpoints(image_size: int = IMAGE_SIZE) -> list[list[int]]:
    """GRID_PINPOINTS scaled to a vision input side, so they stay whole multiples of it."""
    return [
        [height * image_size // IMAGE_SIZE, width * image_size // IMAGE_SIZE]
        for height, width in GRID_PINPOINTS
    ]


def real_geometry(family: str) -> _RealGeometry:
    """The image geometry of `family`'s public checkpoint (what `geometry="real"` builds)."""
    return _family_spec(family).real


def _image_processor(
    spec: _FamilySpec, image_size: int = IMAGE_SIZE, pinpoints: list[list[int]] | None = None
) -> Any:
    import transformers

    # The *Pil class by name: with torchvision installed the plain name is the torchvision backend, whose pixel
    # values differ; without it the plain name falls back to the PIL class with a warning.
    name = spec.image_processor_class
    image_processor_class = getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)
    if spec.vision_model_type == "siglip_vision_model":
        return image_processor_class(size={"height": image_size, "width": image_size})
    kwargs: dict[str, Any] = {
        "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size},
    }
    if spec.processor_class == "LlavaNextProcessor":
        # Must equal the model config's pinpoints, or the processor's token count and the model's features differ.
        kwargs["image_grid_pinpoints"] = pinpoints or grid_pinpoints(image_size)
    return image_processor_class(**kwargs)


def build_tiny_model(
    family: str,
    out_dir: str | Path,
    seed: int = 0,
    *,
    geometry: str = "tiny",
    text_hidden: int = TEXT_HIDDEN,
    text_layers: int = 2,
    vision_hidden: int = VISION_HIDDEN,
    vision_layers: int | None = None,
    image_size: int | None = None,
    tokenizer_corpus: str = "",
) -> Path:
    """Write a tiny random-weight checkpoint of `family` (one of FAMILIES) to out_dir and return its path.

    It loads back with AutoProcessor.from_pretrained(out_dir, backend="pil") and
    AutoModelForImageTextToText.from_pretrained(out_dir). The same seed gives byte-identical files.
    `geometry`: "tiny" (32 px images, 8 px patches, 16 image tokens) or "real" (the public checkpoint's vision
    input side, patch size, anyres pinpoints, feature layers and processor settings; see _RealGeometry), with
    tiny weights either way.
    The keyword arguments size a larger model (training/train_tiny.py trains one): hidden sizes and layer counts
    of the text and vision models (vision_layers None: the family's default), the vision input side (tiny
    geometry only: a multiple of PATCH_SIZE; LLaVA-NeXT's pinpoints scale with it), and extra tokenizer corpus
    lines.
    """
    import torch
    import transformers

    spec = _family_spec(family)
    if geometry not in GEOMETRIES:
        raise ValueError(f"unknown geometry {geometry!r}; choose one of {', '.join(GEOMETRIES)}")
    out = Path(out_dir)
    template = chat_template(FAMILY_FORMATS[family])

    # 1. The image geometry: the tiny one, or the public checkpoint's.
    if geometry == "real":
        real = spec.real
        if image_size is not None and image_size != real.image_size:
            raise ValueError(
                f"image_size {image_size} conflicts with geometry 'real' ({real.checkpoint} uses {real.image_size})"
            )
        image_size, patch_size = real.image_size, real.patch_size
        pinpoints = [list(point) for point in real.grid_pinpoints or ()]
        vision_layers = real.vision_layers if vision_layers is None else vision_layers
        text_model_type, max_positions = real.text_model_type, REAL_MAX_POSITIONS
    else:
        image_size = IMAGE_SIZE if image_size is None else image_size
        patch_size, pinpoints = PATCH_SIZE, grid_pinpoints(image_size)
        text_model_type, max_positions = None, 512
    out.mkdir(parents=True, exist_ok=True)

    # 2. Tokenizer; the model's image_token_index must be its id of <image>.
    tokenizer = build_tokenizer(chatml=spec.text_model_type == "qwen2", extra_corpus=tokenizer_corpus)
    tokenizer.chat_template = template

    # 3. Model config.
    model_class = getattr(transformers, spec.model_class)
    vision_config = _vision_config(spec, vision_hidden, vision_layers, image_size, patch_size)
    if geometry == "real" and spec.vision_model_type == "siglip_vision_model":
        vision_config["vision_use_head"] = (
            False  # as in llava-interleave-qwen-0.5b-hf: features, no pooling head
        )
    config_kwargs: dict[str, Any] = {
        "vision_config": vision_config,
        "text_config": _text_config(
            spec, tokenizer, text_hidden, text_layers, model_type=text_model_type, max_positions=max_positions
        ),
        "image_token_index": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "image_seq_length": (image_size // patch_size) ** 2,
    }
    if spec.vision_feature_layer is not None:
        config_kwargs["vision_feature_layer"] = spec.vision_feature_layer
        config_kwargs["vision_feature_select_strategy"] = spec.vision_feature_select_strategy
    if spec.processor_class == "LlavaNextProcessor":
        config_kwargs["image_grid_pinpoints"] = pinpoints
    config = model_class.config_class(**config_kwargs)

    # 4. Seeded float32 weights on CPU.
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    # 5. Processor: patch_size, extra tokens and strategy let it expand <image> into the model's feature count.
    processor_class = getattr(transformers, spec.processor_class)
    processor = processor_class(
        image_processor=_image_processor(spec, image_size, pinpoints),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        num_additional_image_tokens=spec.num_additional_image_tokens,
        chat_template=template,
        image_token=IMAGE_TOKEN,
    )

    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    metadata = {"family": family, "seed": seed, "geometry": geometry}
    (out / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    logger.info("tiny %s model (seed %d, %s geometry) written to %s", family, seed, geometry, out)
    return out


def varied_length_stop_token(new_tokens: list[list[int]]) -> int:
    """A stop token for random weights, which have no useful end-of-sequence token: the token that these greedy
    outputs (one list of new token ids per row) reach first at the most different steps, so that with it as
    `eos_token_id` rows end at different lengths, as real captions do. Ties go to the smallest id."""
    candidates = sorted({token for row in new_tokens for token in row})
    if not candidates:
        raise ValueError("no generated tokens to choose a stop token from")
    return max(candidates, key=lambda token: len({row.index(token) for row in new_tokens if token in row}))
