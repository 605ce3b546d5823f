"""Build tiny random-weight LLaVA-family checkpoints offline, in the real transformers classes, for tests.

Each is a save_pretrained directory: float32 safetensors, its own byte-level BPE tokenizer, processor, chat template.
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
    spec: _FamilySpec, hidden: int = VISION_HIDDEN, layers: int | None = None, image_size: int = IMAGE_SIZE
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "model_type": spec.vision_model_type,
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": spec.vision_layers if layers is None else layers,
        "num_attention_heads": 4,
        "image_size": image_size,
        "patch_size": PATCH_SIZE,
        "initializer_range": INITIALIZER_RANGE,
    }
    if spec.vision_model_type == "clip_vision_model":
        config["projection_dim"] = hidden
    return config


def _text_config(
    spec: _FamilySpec, tokenizer: Any, hidden: int = TEXT_HIDDEN, layers: int = 2
) -> dict[str, Any]:
    return {
        "model_type": spec.text_model_type,
        "vocab_size": len(tokenizer),
        "hidden_size": hidden,
        "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "initializer_range": INITIALIZER_RANGE,
        # Tied input/output embeddings with random weights make the model repeat one token.
        "tie_word_embeddings": False,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def grid_pinpoints(image_size: int = IMAGE_SIZE) -> list[list[int]]:
    """GRID_PINPOINTS scaled to a vision input side, so they stay whole multiples of it."""
    return [
        [height * image_size // IMAGE_SIZE, width * image_size // IMAGE_SIZE]
        for height, width in GRID_PINPOINTS
    ]


def _image_processor(spec: _FamilySpec, image_size: int = IMAGE_SIZE) -> Any:
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
        kwargs["image_grid_pinpoints"] = grid_pinpoints(image_size)
    return image_processor_class(**kwargs)


def build_tiny_model(
    family: str,
    out_dir: str | Path,
    seed: int = 0,
    *,
    text_hidden: int = TEXT_HIDDEN,
    text_layers: int = 2,
    vision_hidden: int = VISION_HIDDEN,
    vision_layers: int | None = None,
    image_size: int = IMAGE_SIZE,
    tokenizer_corpus: str = "",
) -> Path:
    """Write a tiny random-weight checkpoint of `family` (one of FAMILIES) to out_dir and return its path.

    It loads back with AutoProcessor.from_pretrained(out_dir, backend="pil") and
    AutoModelForImageTextToText.from_pretrained(out_dir). The same seed gives byte-identical files.
    The keyword arguments size a larger model (training/train_tiny.py trains one): hidden sizes and layer counts
    of the text and vision models (vision_layers None: the family's default), the vision input side (a multiple
    of PATCH_SIZE; LLaVA-NeXT's pinpoints scale with it), and extra tokenizer corpus lines.
    """
    import torch
    import transformers

    spec = _family_spec(family)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    template = chat_template(FAMILY_FORMATS[family])

    # 1. Tokenizer; the model's image_token_index must be its id of <image>.
    tokenizer = build_tokenizer(chatml=spec.text_model_type == "qwen2", extra_corpus=tokenizer_corpus)
    tokenizer.chat_template = template

    # 2. Model config.
    model_class = getattr(transformers, spec.model_class)
    config_kwargs: dict[str, Any] = {
        "vision_config": _vision_config(spec, vision_hidden, vision_layers, image_size),
        "text_config": _text_config(spec, tokenizer, text_hidden, text_layers),
        "image_token_index": tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        "image_seq_length": (image_size // PATCH_SIZE) ** 2,
    }
    if spec.vision_feature_layer is not None:
        config_kwargs["vision_feature_layer"] = spec.vision_feature_layer
        config_kwargs["vision_feature_select_strategy"] = spec.vision_feature_select_strategy
    if spec.processor_class == "LlavaNextProcessor":
        config_kwargs["image_grid_pinpoints"] = grid_pinpoints(image_size)
    config = model_class.config_class(**config_kwargs)

    # 3. Seeded float32 weights on CPU.
    torch.manual_seed(seed)
    model = model_class(config).to(torch.float32).eval()
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    # 4. Processor: patch_size, extra tokens and strategy let it expand <image> into the model's feature count.
    processor_class = getattr(transformers, spec.processor_class)
    processor = processor_class(
        image_processor=_image_processor(spec, image_size),
        tokenizer=tokenizer,
        patch_size=PATCH_SIZE,
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        num_additional_image_tokens=spec.num_additional_image_tokens,
        chat_template=template,
        image_token=IMAGE_TOKEN,
    )

    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    (out / METADATA_FILE).write_text(json.dumps({"family": family, "seed": seed}, indent=2) + "\n")
    logger.info("tiny %s model (seed %d) written to %s", family, seed, out)
    return out


def varied_length_stop_token(new_tokens: list[list[int]]) -> int:
    """A stop token for random weights, which have no useful end-of-sequence token: the token that these greedy
    outputs (one list of new token ids per row) reach first at the most different steps, so that with it as
    `eos_token_id` rows end at different lengths, as real captions do. Ties go to the smallest id."""
    candidates = sorted({token for row in new_tokens for token in row})
    if not candidates:
        raise ValueError("no generated tokens to choose a stop token from")
    return max(candidates, key=lambda token: len({row.index(token) for row in new_tokens if token in row}))
