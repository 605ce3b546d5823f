"""Benchmark: batched generation with the real shapes of three LLaVA checkpoints (random weights), on a GPU.

Run on a GPU machine (needs no network and no Ray; written for transformers >= 5.17 and torch >= 2.11, the stack
of the lent GPU machines; its tiny configuration is checked on CPU with transformers 5.17 and 5.23):
    python -m benchmarks.gpu_generation --json-out gpu_generation.json
    python -m benchmarks.gpu_generation --families llava --batch-sizes 1 8 32 64 --dtype float16
Run the CPU smoke test (a tiny model of the same shape; what tests/benchmarks/test_gpu_script.py runs):
    python -m benchmarks.gpu_generation --config tiny
Add --quick for one repeat and fewer images; --prompts-per-image K asks every image K questions (rows are then
(image, prompt) pairs, and "images" in the report count rows), where the operator prefills each image once;
--varied-lengths lets rows stop at different lengths (at most --new-tokens), where the operator's continuous
batching refills the slots of finished rows and `generate` decodes every batch to its longest row:
    python -m benchmarks.gpu_generation --families llava --batch-sizes 32 64 --varied-lengths --min-images 256

For each family it builds a model with the REAL configuration of the checkpoint (written out below, no download)
directly on the device in float16/bfloat16 with random weights, then measures, at each batch size:
  - operator: the project's PreprocessForModel (CPU, timed apart) + Generate (left-padded, continuous batching
    through `batch size` slots, fed windows of --length-window batches as the caption job feeds a replica);
  - pipeline: transformers.pipeline("image-text-to-text") with the same model, processor and batch_size;
  - loop: the per-image `processor(...)` + `model.generate` loop most captioning scripts use (batch size 1).
By default every variant generates exactly --new-tokens tokens per image (greedy, min_new_tokens =
max_new_tokens), so images/s compare like for like; output tokens/s counts each row's tokens to its stop token. The operator's images/s counts its
generate calls only (in the Ray job preprocessing runs on other CPU actors, in parallel); its end-to-end figure
(preprocess + generate in one process) is reported beside it.

Random weights make the text meaningless but not the cost: the compute per token depends on the shapes only.
The tokenizer is a small byte-level BPE trained offline (llava_batch.pipeline.families.tiny_models.build_tokenizer); the real
configurations keep their real vocabulary sizes (the lm_head cost matters), and ids the small tokenizer does not
know decode to nothing, for every variant alike.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent

import numpy as np  # noqa: E402
import torch  # noqa: E402

from llava_batch.operators.batch import object_array  # noqa: E402

# Neither of these imports Ray: operators/ never does, and llava_batch.pipeline.families.tiny_models only imports the prompt formats.
from llava_batch.operators.generation import replica as generate_module  # noqa: E402
from llava_batch.operators.generation.loading import resolve_dtype  # noqa: E402
from llava_batch.operators.generation.replica import REPLICA_STATS_COLUMN, Generate  # noqa: E402
from llava_batch.operators.preprocess import PreprocessForModel  # noqa: E402
from llava_batch.pipeline.families.prompt_formats import FAMILY_FORMATS, chat_template  # noqa: E402
from llava_batch.pipeline.families.tiny_models import build_tokenizer, varied_length_stop_token  # noqa: E402

VARIANTS = ("operator", "pipeline", "loop")
IMAGE_TOKEN = "<image>"
MAX_IMAGE_PIXELS = 50_000_000
# Captioning prompts of different lengths, so batches need (left) padding as real ones do.
PROMPTS = (
    "Describe this image.",
    "Write a short caption for this picture.",
    "What is shown in this image? Describe the image in more details.",
    "Describe the scene, the objects in it and their colours, in two sentences.",
)

# ---------------------------------------------------------------------------------------------------------------
# Model configurations: the checkpoints' config.json and processor settings, written out (no download)
# ---------------------------------------------------------------------------------------------------------------

# openai/clip-vit-large-patch14-336, the vision tower of LLaVA-1.5 and LLaVA-NeXT.
_CLIP_VIT_L_336: dict[str, Any] = {
    "model_type": "clip_vision_model",
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "image_size": 336,
    "patch_size": 14,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# lmsys/vicuna-7b-v1.5 (Llama-2-7B dimensions) with LLaVA's two added tokens, padded to 32064.
_VICUNA_7B: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "vocab_size": 32064,
    "tie_word_embeddings": False,
}
# mistralai/Mistral-7B-Instruct-v0.2 as in llava-hf/llava-v1.6-mistral-7b-hf.
_MISTRAL_7B: dict[str, Any] = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-5,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "vocab_size": 32064,
    "tie_word_embeddings": False,
}
# google/siglip-so400m-patch14-384 without its head, 26 layers, as llava-interleave uses it.
_SIGLIP_SO400M_384: dict[str, Any] = {
    "model_type": "siglip_vision_model",
    "hidden_size": 1152,
    "intermediate_size": 4304,
    "num_hidden_layers": 26,
    "num_attention_heads": 16,
    "image_size": 384,
    "patch_size": 14,
    "vision_use_head": False,
}
# Qwen/Qwen1.5-0.5B-Chat, vocabulary grown to 152000 by the conversion. The checkpoint ties its embeddings;
# untied here so random weights do not repeat one token (the cost per token is the same).
_QWEN15_05B: dict[str, Any] = {
    "model_type": "qwen2",
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1000000.0,
    "vocab_size": 152000,
    "tie_word_embeddings": False,
}
# llava-hf/llava-v1.6-mistral-7b-hf: image_grid_pinpoints (height, width), identical in model and processor.
_NEXT_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to build one checkpoint's architecture and processor offline."""

    # The project's family name (llava_batch.pipeline.families.tiny_models.FAMILIES), which also picks the prompt format.
    family: str
    checkpoint: str  # the Hub checkpoint whose configuration this is
    model_class: str
    processor_class: str
    image_processor_class: str  # the PIL one is used where transformers has it
    text_config: dict[str, Any]
    vision_config: dict[str, Any]
    # Top-level config fields besides text/vision: feature layer and strategy, projector, pinpoints.
    model_kwargs: dict[str, Any]
    image_processor_kwargs: dict[str, Any]
    # tokens the vision tower adds besides the patches (CLIP's CLS) and whether the model drops them
    num_additional_image_tokens: int
    vision_feature_select_strategy: str
    chatml: bool = False  # Qwen2-style tokenizer (<|im_start|>/<|im_end|>) instead of Llama-style
    initializer_range: float = 0.02


REAL_SPECS: dict[str, ModelSpec] = {
    "llava": ModelSpec(
        family="llava",
        checkpoint="llava-hf/llava-1.5-7b-hf",
        model_class="LlavaForConditionalGeneration",
        processor_class="LlavaProcessor",
        image_processor_class="CLIPImageProcessor",
        text_config=_VICUNA_7B,
        vision_config=_CLIP_VIT_L_336,
        model_kwargs={
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "projector_hidden_act": "gelu",
        },
        image_processor_kwargs={"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}},
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
    ),
    "llava_next": ModelSpec(
        family="llava_next",
        checkpoint="llava-hf/llava-v1.6-mistral-7b-hf",
        model_class="LlavaNextForConditionalGeneration",
        processor_class="LlavaNextProcessor",
        image_processor_class="LlavaNextImageProcessor",
        text_config=_MISTRAL_7B,
        vision_config=_CLIP_VIT_L_336,
        model_kwargs={
            "vision_feature_layer": -2,
            "vision_feature_select_strategy": "default",
            "projector_hidden_act": "gelu",
            "image_grid_pinpoints": _NEXT_PINPOINTS,
        },
        image_processor_kwargs={
            "size": {"shortest_edge": 336},
            "crop_size": {"height": 336, "width": 336},
            "image_grid_pinpoints": _NEXT_PINPOINTS,
        },
        num_additional_image_tokens=1,
        vision_feature_select_strategy="default",
    ),
    "llava_interleave": ModelSpec(
        family="llava_interleave",
        checkpoint="llava-hf/llava-interleave-qwen-0.5b-hf",
        model_class="LlavaForConditionalGeneration",
        processor_class="LlavaProcessor",
        image_processor_class="SiglipImageProcessor",
        text_config=_QWEN15_05B,
        vision_config=_SIGLIP_SO400M_384,
        # SigLIP has no CLS token: the model keeps every feature of the last layer.
        model_kwargs={
            "vision_feature_layer": -1,
            "vision_feature_select_strategy": "full",
            "projector_hidden_act": "gelu",
        },
        image_processor_kwargs={"size": {"height": 384, "width": 384}},
        num_additional_image_tokens=0,
        vision_feature_select_strategy="full",
        chatml=True,
    ),
}


def tiny_spec(spec: ModelSpec) -> ModelSpec:
    """The same classes, model types, feature strategies and pinpoint layout, with CPU-sized dimensions:
    32 px images in 8 px patches (pinpoints scaled by 336 -> 32), 2 + 2 layers, the tokenizer's vocabulary."""
    scale = 32 / 336
    text = {
        **spec.text_config,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "vocab_size": None,  # filled with len(tokenizer)
    }
    vision = {
        **spec.vision_config,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 32,
        "patch_size": 8,
    }
    if "projection_dim" in vision:
        vision["projection_dim"] = 32
    model_kwargs = dict(spec.model_kwargs)
    image_kwargs = dict(spec.image_processor_kwargs)
    if "image_grid_pinpoints" in model_kwargs:
        pinpoints = [[round(h * scale), round(w * scale)] for h, w in model_kwargs["image_grid_pinpoints"]]
        model_kwargs["image_grid_pinpoints"] = image_kwargs["image_grid_pinpoints"] = pinpoints
    if "crop_size" in image_kwargs:
        image_kwargs.update(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    else:
        image_kwargs["size"] = {"height": 32, "width": 32}
    # Larger than 0.02 so greedy outputs of random weights depend on the image and prompt.
    return dataclasses.replace(
        spec,
        checkpoint=f"{spec.checkpoint} (tiny)",
        text_config=text,
        vision_config=vision,
        model_kwargs=model_kwargs,
        image_processor_kwargs=image_kwargs,
        initializer_range=0.1,
    )


def model_specs(config: str) -> dict[str, ModelSpec]:
    if config == "real":
        return dict(REAL_SPECS)
    if config == "tiny":
        return {name: tiny_spec(spec) for name, spec in REAL_SPECS.items()}
    raise ValueError(f"--config must be 'real' or 'tiny', not {config!r}")


# ---------------------------------------------------------------------------------------------------------------
# Building processor and model offline
# ---------------------------------------------------------------------------------------------------------------


def build_processor(spec: ModelSpec) -> Any:
    """The family's processor around an offline tokenizer, wired so <image> expands to the model's features."""
    import transformers

    tokenizer = build_tokenizer(chatml=spec.chatml)
    template = chat_template(FAMILY_FORMATS[spec.family])
    tokenizer.chat_template = template
    # The PIL image processor by name: with torchvision installed the plain name is the torchvision backend.
    name = spec.image_processor_class
    image_processor_class = getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)
    processor_class = getattr(transformers, spec.processor_class)
    return processor_class(
        image_processor=image_processor_class(**spec.image_processor_kwargs),
        tokenizer=tokenizer,
        patch_size=spec.vision_config["patch_size"],
        vision_feature_select_strategy=spec.vision_feature_select_strategy,
        num_additional_image_tokens=spec.num_additional_image_tokens,
        chat_template=template,
        image_token=IMAGE_TOKEN,
    )


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_model(
    spec: ModelSpec, tokenizer: Any, *, device: str, dtype: torch.dtype, seed: int = 0
) -> torch.nn.Module:
    """Random weights, created directly on `device` in `dtype` (a 7B model in a few seconds, no fp32 copy)."""
    import transformers

    text = dict(spec.text_config)
    if text.get("vocab_size") is None:
        text["vocab_size"] = len(tokenizer)
    text.update(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=spec.initializer_range,
    )
    vision = {**spec.vision_config, "initializer_range": spec.initializer_range}
    model_class = getattr(transformers, spec.model_class)
    config = model_class.config_class(
        text_config=text,
        vision_config=vision,
        # The model finds the images' places by this id: the tokenizer's id of <image>.
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        **spec.model_kwargs,
    )
    config._attn_implementation = "sdpa"  # what llava_batch.operators.generation.loading.load_model asks for
    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        model = model_class(config)
    model.eval()
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    return model


def parameter_count(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def generate_operator_around(
    model: torch.nn.Module, checkpoint_dir: str | Path, generate_kwargs: dict[str, Any]
) -> Generate:
    """The project's Generate operator holding an in-memory model instead of loading weights from disk.

    Generate's constructor loads weights with llava_batch.operators.generation.loading.load_model (patched where the
    replica module imported it) and the tokenizer from the checkpoint directory; only the weights loader is swapped
    (saving and reloading 14 GB would take minutes), so everything else the constructor sets up is the operator's own.
    """
    with mock.patch.object(generate_module, "load_model", lambda *args, **kwargs: model):
        return Generate(str(checkpoint_dir), generate_kwargs=generate_kwargs)


def fixed_length_kwargs(new_tokens: int) -> dict[str, Any]:
    """Greedy and exactly `new_tokens` tokens per row (EOS is suppressed until then)."""
    return {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}


def varied_length_kwargs(
    model: torch.nn.Module, processor: Any, inputs: Inputs, new_tokens: int, probe_rows: int = 8
) -> dict[str, Any]:
    """Greedy, at most `new_tokens`, stopping at a token that the model's outputs on these inputs reach at
    different steps (llava_batch.pipeline.families.tiny_models.varied_length_stop_token): rows end at different lengths, as real
    captions do, for every variant alike."""
    probe = run_loop(model, processor, inputs.head(probe_rows), fixed_length_kwargs(new_tokens))
    stop = varied_length_stop_token(probe.new_token_ids)
    return {"max_new_tokens": new_tokens, "do_sample": False, "eos_token_id": stop}


# ---------------------------------------------------------------------------------------------------------------
# Inputs: synthetic JPEG photos, on disk (the pipeline and the loop read paths) and as bytes (the operator)
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    ids: list[str]
    paths: list[Path]
    payloads: list[bytes]
    prompts: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def head(self, count: int) -> Inputs:
        return Inputs(self.ids[:count], self.paths[:count], self.payloads[:count], self.prompts[:count])

    def with_prompts_per_image(self, count: int) -> Inputs:
        """Each image under the first `count` PROMPTS, image-major, as a prompt set (`--prompts-file`) or the
        questions of `instruct` reach the model: rows are then (image, prompt) pairs."""
        if count == 1:
            return self
        if not 1 <= count <= len(PROMPTS):
            raise ValueError(f"prompts per image: 1 to {len(PROMPTS)}, got {count}")
        pairs = [(index, prompt) for index in range(len(self)) for prompt in PROMPTS[:count]]
        return Inputs(
            [f"{self.ids[index]}#{PROMPTS.index(prompt)}" for index, prompt in pairs],
            [self.paths[index] for index, _ in pairs],
            [self.payloads[index] for index, _ in pairs],
            [prompt for _, prompt in pairs],
        )


def synthetic_jpeg(width: int, height: int, rng: np.random.Generator, quality: int = 90) -> bytes:
    """A photo-like JPEG: smooth colour gradients, a few flat shapes and sensor-like noise."""
    from PIL import Image, ImageDraw

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for _ in range(3):
        fx, fy, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        channels.append(127 + 100 * np.sin(2 * np.pi * (fx * xs / width + fy * ys / height) + phase))
    pixels = np.stack(channels, axis=-1) + rng.normal(0, 6, (height, width, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        x0, y0 = int(rng.integers(0, width - 1)), int(rng.integers(0, height - 1))
        x1 = min(width - 1, x0 + int(rng.integers(1, max(2, width // 3))))
        y1 = min(height - 1, y0 + int(rng.integers(1, max(2, height // 3))))
        draw.rectangle((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_inputs(out_dir: Path, count: int, *, width: int = 640, height: int = 480, seed: int = 0) -> Inputs:
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids, paths, payloads, prompts = [], [], [], []
    for index in range(count):
        payload = synthetic_jpeg(width, height, rng)
        path = out_dir / f"image-{index:04d}.jpg"
        path.write_bytes(payload)
        ids.append(f"image-{index:04d}")
        paths.append(path)
        payloads.append(payload)
        prompts.append(PROMPTS[index % len(PROMPTS)])
    return Inputs(ids, paths, payloads, prompts)


# ---------------------------------------------------------------------------------------------------------------
# The three variants
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class VariantRun:
    """One pass of a variant over the inputs."""

    variant: str
    batch_size: int
    images: int
    seconds: float  # wall time of what the variant's images/s counts (the operator: its generate calls)
    texts: list[str]
    generate_seconds: float = 0.0  # time inside model.generate
    generate_rows: list[int] = field(default_factory=list)  # rows per model.generate call
    # The operator's continuous batching (no model.generate call): active rows per decoding step, on average.
    rows_per_decode_step: float | None = None
    preprocess_seconds: float = 0.0  # the operator's PreprocessForModel calls (CPU)
    row_tokens: list[int] = field(default_factory=list)  # new tokens of each row, its stop token included
    new_token_ids: list[list[int]] = field(default_factory=list)  # the loop's, per row, to its stop token

    @property
    def output_tokens(self) -> int:
        return sum(self.row_tokens)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds

    @property
    def end_to_end_images_per_s(self) -> float:
        return self.images / (self.seconds + self.preprocess_seconds)


class GenerateSpy:
    """Wraps model.generate while active: rows per call, seconds spent inside it (what the rest costs), and the
    new tokens of every row, up to and including its stop token (`new_tokens`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.rows: list[int] = []
        self.seconds = 0.0
        self.new_tokens: list[list[int]] = []

    def __enter__(self) -> GenerateSpy:
        original = self.model.generate

        def spy(*args: Any, **kwargs: Any) -> Any:
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.rows.append(int(ids.shape[0]) if ids is not None else -1)
            start = time.perf_counter()
            output = original(*args, **kwargs)
            _synchronize(self.model)
            self.seconds += time.perf_counter() - start
            eos = kwargs.get("eos_token_id", self.model.generation_config.eos_token_id)
            stops = set(eos if isinstance(eos, list) else [eos])
            for row in output[:, ids.shape[1] :].tolist():
                end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
                self.new_tokens.append(row[:end])
            return output

        self.model.generate = spy  # an instance attribute shadows the method for every caller
        return self

    def __exit__(self, *exc: object) -> None:
        del self.model.generate


def _synchronize(model: torch.nn.Module) -> None:
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()


def run_operator(
    preprocess: PreprocessForModel, generate: Generate, inputs: Inputs, batch_size: int, window: int = 1
) -> VariantRun:
    """Rows go through the operators as the caption job hands them over: windows of `window` batches of
    `batch_size` rows (--length-window), which the replica decodes `batch_size` rows at a time."""
    generate.rows_per_call = batch_size
    step = batch_size * window
    texts: list[str] = []
    prep_seconds = gen_seconds = model_seconds = 0.0
    row_tokens: list[int] = []
    decode_steps = decode_row_steps = 0
    with GenerateSpy(generate.model) as spy:
        for start in range(0, len(inputs), step):
            stop = min(len(inputs), start + step)
            batch = {
                "id": object_array(inputs.ids[start:stop]),
                "image_bytes": object_array(inputs.payloads[start:stop]),
                "prompt": object_array(inputs.prompts[start:stop]),
            }
            began = time.perf_counter()
            prepared = preprocess(batch)
            prepared_at = time.perf_counter()
            out = generate(prepared)
            gen_seconds += time.perf_counter() - prepared_at
            prep_seconds += prepared_at - began
            failed = [error for error in out["error"] if error is not None]
            if failed:
                raise RuntimeError(f"the operator returned error rows: {failed[:3]}")
            texts.extend(str(text) for text in out["generated_text"])
            row_tokens.extend(int(count) for count in out["num_output_tokens"])
            # The replica's own account of its time in the model: `model.generate` plus, where rows share an
            # image, the prefill of that image, which runs as a plain forward call before `generate`.
            stats = json.loads(out[REPLICA_STATS_COLUMN][0])
            model_seconds += stats["generate_s"]
            decode_steps += stats.get("decode_steps", 0)
            decode_row_steps += stats.get("decode_row_steps", 0)
    return VariantRun(
        "operator",
        batch_size,
        len(inputs),
        gen_seconds,
        texts,
        generate_seconds=model_seconds,
        generate_rows=spy.rows,
        rows_per_decode_step=decode_row_steps / decode_steps if decode_steps else None,
        preprocess_seconds=prep_seconds,
        row_tokens=row_tokens,
    )


def make_pipeline(model: torch.nn.Module, processor: Any) -> Any:
    """transformers.pipeline around the same model and processor. Left padding, as decoder-only batched
    generation needs (the tokenizer's default, right, would make shorter prompts' outputs wrong)."""
    from transformers import pipeline

    processor.tokenizer.padding_side = "left"
    # The model's own device: left to itself the pipeline picks cuda:0 whenever there is one, moving the model.
    return pipeline("image-text-to-text", model=model, processor=processor, device=model.device)


def run_pipeline(pipe: Any, inputs: Inputs, batch_size: int, decoding: dict[str, Any]) -> VariantRun:
    """The documented chat-format call: images by path inside the messages, batch_size rows per generate."""
    chats = [
        [
            {
                "role": "user",
                "content": [{"type": "image", "path": str(path)}, {"type": "text", "text": prompt}],
            }
        ]
        for path, prompt in zip(inputs.paths, inputs.prompts)
    ]
    with GenerateSpy(pipe.model) as spy:
        began = time.perf_counter()
        outputs = pipe(
            text=chats,
            batch_size=batch_size,
            max_new_tokens=decoding["max_new_tokens"],
            generate_kwargs={key: value for key, value in decoding.items() if key != "max_new_tokens"},
            return_full_text=False,
        )
        seconds = time.perf_counter() - began
    texts = [str(_first(output)["generated_text"]) for output in outputs]
    return VariantRun(
        "pipeline",
        batch_size,
        len(inputs),
        seconds,
        texts,
        generate_seconds=spy.seconds,
        generate_rows=spy.rows,
        row_tokens=[len(row) for row in spy.new_tokens],
    )


def _first(output: Any) -> dict[str, Any]:
    return output[0] if isinstance(output, list) else output


def run_loop(model: torch.nn.Module, processor: Any, inputs: Inputs, decoding: dict[str, Any]) -> VariantRun:
    """What most captioning scripts do: open the image, apply the chat template, process, generate, decode."""
    from PIL import Image

    texts: list[str] = []
    with GenerateSpy(model) as spy:
        began = time.perf_counter()
        for path, prompt in zip(inputs.paths, inputs.prompts):
            image = Image.open(path).convert("RGB")
            conversation = [
                {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}
            ]
            text = processor.apply_chat_template(conversation, add_generation_prompt=True)
            encoded = processor(images=image, text=text, return_tensors="pt").to(
                model.device, dtype=model.dtype
            )
            output = model.generate(**encoded, **decoding)
            prompt_length = encoded["input_ids"].shape[1]
            texts.append(processor.decode(output[0, prompt_length:], skip_special_tokens=True))
        seconds = time.perf_counter() - began
    return VariantRun(
        "loop",
        1,
        len(inputs),
        seconds,
        texts,
        generate_seconds=spy.seconds,
        generate_rows=spy.rows,
        row_tokens=[len(row) for row in spy.new_tokens],
        new_token_ids=spy.new_tokens,
    )


def agreement(texts: list[str], reference: list[str]) -> float:
    """Share of rows (over the shorter list) whose generated text equals the reference, ignoring outer spaces."""
    count = min(len(texts), len(reference))
    if count == 0:
        return float("nan")
    return sum(a.strip() == b.strip() for a, b in zip(texts[:count], reference[:count])) / count


def images_for(batch_size: int, min_images: int) -> int:
    """Whole batches, at least `min_images` images."""
    batches = max(1, -(-min_images // batch_size))
    return batches * batch_size


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---------------------------------------------------------------------------------------------------------------
# One family, all batch sizes, interleaved repeats
# ---------------------------------------------------------------------------------------------------------------


Runs = dict[tuple[str, int], list[VariantRun]]


def measure_variants(
    *,
    model: torch.nn.Module,
    processor: Any,
    preprocess: PreprocessForModel,
    operator: Generate,
    inputs: Inputs,
    batch_sizes: list[int],
    decoding: dict[str, Any],
    min_images: int,
    loop_images: int,
    repeats: int,
    log: Callable[[str], None],
    window: int = 1,
) -> Runs:
    """Operator and pipeline at every batch size and the loop, interleaved within each repeat (the order of
    operator and pipeline alternates between repeats), after one warm-up pass of each on a small batch."""
    pipe = make_pipeline(model, processor)
    warm = inputs.head(min(2, len(inputs)))
    run_operator(preprocess, operator, warm, len(warm))
    run_pipeline(pipe, warm, len(warm), decoding)
    run_loop(model, processor, warm.head(1), decoding)

    runs: Runs = {}
    for repeat in range(repeats):
        loop_run = run_loop(model, processor, inputs.head(loop_images), decoding)
        runs.setdefault(("loop", 1), []).append(loop_run)
        log(f"  repeat {repeat + 1}/{repeats} loop     batch   1: {loop_run.images_per_s:8.3f} images/s")
        for size in batch_sizes:
            subset = inputs.head(images_for(size, min_images))
            order = ("operator", "pipeline") if repeat % 2 == 0 else ("pipeline", "operator")
            for variant in order:
                try:
                    run = (
                        run_operator(preprocess, operator, subset, size, window)
                        if variant == "operator"
                        else run_pipeline(pipe, subset, size, decoding)
                    )
                except torch.OutOfMemoryError as error:  # the pipeline has no back-off; report, go on
                    log(f"  {variant} batch {size}: out of memory ({error})")
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
                    continue
                runs.setdefault((variant, size), []).append(run)
                log(
                    f"  repeat {repeat + 1}/{repeats} {variant:8s} batch {size:3d}: "
                    f"{run.images_per_s:8.3f} images/s ({run.images} images, {rows_per_call_text(run)})"
                )
    return runs


def rows_per_call_text(run: VariantRun) -> str:
    """How many rows the model saw at once: per `model.generate` call, or per decoding step of the slots."""
    if run.rows_per_decode_step is not None:
        return f"rows per decoding step {run.rows_per_decode_step:.2f}"
    return f"rows per generate {sorted(set(run.generate_rows))}"


def token_spread(row_tokens: list[int]) -> dict[str, float]:
    """New tokens per row: how much the rows' lengths differ (with --varied-lengths, what the slots save on)."""
    if not row_tokens:
        return {}
    return {
        "min": min(row_tokens),
        "median": median([float(count) for count in row_tokens]),
        "mean": sum(row_tokens) / len(row_tokens),
        "max": max(row_tokens),
    }


def paired_ratio(numerators: list[float], denominators: list[float]) -> float:
    """Median over repeats of the ratio within each repeat (both measured minutes apart at most)."""
    return median([a / b for a, b in zip(numerators, denominators)])


def summarize(spec: ModelSpec, runs: Runs, batch_sizes: list[int]) -> dict[str, Any]:
    """The JSON rows: medians over repeats, ratios paired by repeat, agreement with the loop's texts."""
    results: list[dict[str, Any]] = []
    loop_rates = [run.images_per_s for run in runs[("loop", 1)]]
    for (variant, size), variant_runs in sorted(runs.items(), key=lambda item: (item[0][1], item[0][0])):
        first = variant_runs[0]
        rates = [run.images_per_s for run in variant_runs]
        row: dict[str, Any] = {
            "family": spec.family,
            "checkpoint": spec.checkpoint,
            "variant": variant,
            "batch_size": size,
            "images": first.images,
            "repeats": len(variant_runs),
            "images_per_s": median(rates),
            "output_tokens_per_s": median([run.output_tokens / run.seconds for run in variant_runs]),
            "share_in_model_generate": median([run.generate_seconds / run.seconds for run in variant_runs]),
            "generate_rows_per_call": sorted(set(first.generate_rows)),
            "rows_per_decode_step": first.rows_per_decode_step,
            "tokens_per_row": token_spread(first.row_tokens),
        }
        if variant != "loop":
            row["vs_loop"] = paired_ratio(rates, loop_rates)
        if variant == "operator":
            end_to_end = [run.end_to_end_images_per_s for run in variant_runs]
            row["preprocess_images_per_s"] = median(
                [run.images / run.preprocess_seconds for run in variant_runs]
            )
            row["end_to_end_images_per_s"] = median(end_to_end)
            row["end_to_end_vs_loop"] = paired_ratio(end_to_end, loop_rates)
            if ("pipeline", size) in runs:
                pipeline_rates = [run.images_per_s for run in runs[("pipeline", size)]]
                row["vs_pipeline"] = paired_ratio(rates, pipeline_rates)
                row["end_to_end_vs_pipeline"] = paired_ratio(end_to_end, pipeline_rates)
        results.append(row)

    reference = runs[("loop", 1)][0].texts
    agreements = []
    for size in batch_sizes:
        entry: dict[str, Any] = {"family": spec.family, "batch_size": size, "rows_compared": len(reference)}
        for variant in ("operator", "pipeline"):
            if (variant, size) in runs:
                entry[f"{variant}_vs_loop"] = agreement(runs[(variant, size)][0].texts, reference)
        agreements.append(entry)
    return {"results": results, "agreement": agreements}


def measure_family(
    spec: ModelSpec,
    *,
    device: str,
    dtype: torch.dtype,
    batch_sizes: list[int],
    new_tokens: int,
    min_images: int,
    loop_images: int,
    repeats: int,
    work_dir: Path,
    log: Callable[[str], None],
    prompts_per_image: int = 1,
    varied_lengths: bool = False,
    window: int = 1,
) -> dict[str, Any]:
    """Builds the family's random model in memory, runs operator, pipeline and loop; returns the JSON rows.
    `varied_lengths`: rows stop at a probed stop token instead of all running `new_tokens`; `window`: batches
    per operator call (the job's --length-window)."""
    began = time.perf_counter()
    processor = build_processor(spec)
    checkpoint_dir = work_dir / spec.family
    processor.save_pretrained(checkpoint_dir)  # PreprocessForModel and Generate read the processor from here
    model = build_model(spec, processor.tokenizer, device=device, dtype=dtype)
    log(
        f"{spec.family} ({spec.checkpoint}): {parameter_count(model) / 1e6:.0f} M parameters, {dtype}, "
        f"{device}, built in {time.perf_counter() - began:.1f} s"
    )
    # The peers (transformers.pipeline, the per-image loop) decode images in full: the operator does too, so
    # that outputs are compared on equal pixels and the timings measure generation, not decoding.
    preprocess = PreprocessForModel(str(checkpoint_dir), max_image_pixels=MAX_IMAGE_PIXELS, exact_decode=True)
    largest = max(images_for(size, min_images) for size in batch_sizes)
    images = -(-max(largest, loop_images) // prompts_per_image)
    inputs = write_inputs(work_dir / f"{spec.family}-images", images).with_prompts_per_image(
        prompts_per_image
    )
    decoding = (
        varied_length_kwargs(model, processor, inputs, new_tokens)
        if varied_lengths
        else fixed_length_kwargs(new_tokens)
    )
    log(f"decoding: {decoding}")
    operator = generate_operator_around(model, checkpoint_dir, decoding)
    runs = measure_variants(
        model=model,
        processor=processor,
        preprocess=preprocess,
        operator=operator,
        inputs=inputs,
        batch_sizes=batch_sizes,
        decoding=decoding,
        min_images=min_images,
        loop_images=loop_images,
        repeats=repeats,
        log=log,
        window=window,
    )
    del operator, model, preprocess
    gc.collect()  # the next family's 7B model must not share the GPU with this one
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return summarize(spec, runs, batch_sizes)


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def _ratio(row: dict[str, Any], key: str) -> str:
    return f"x{row[key]:.2f}" if key in row else ""


def format_table(results: list[dict[str, Any]], agreements: list[dict[str, Any]]) -> str:
    """One line per family, variant and batch size. Ratios are medians of ratios paired by repeat; the
    operator's `images/s` counts its generate calls, `e2e` adds its preprocessing done in the same process."""
    header = (
        f"{'family':17s} {'variant':9s} {'batch':>5s} {'images/s':>9s} {'out tok/s':>9s} {'in gen.':>7s} "
        f"{'prep img/s':>10s} {'e2e img/s':>9s} {'vs pipe':>7s} {'e2e/pipe':>8s} {'vs loop':>7s} {'e2e/loop':>8s}"
    )
    lines = [header, "-" * len(header)]
    for row in results:
        prep = f"{row['preprocess_images_per_s']:.1f}" if "preprocess_images_per_s" in row else ""
        end_to_end = f"{row['end_to_end_images_per_s']:.3f}" if "end_to_end_images_per_s" in row else ""
        lines.append(
            f"{row['family']:17s} {row['variant']:9s} {row['batch_size']:5d} {row['images_per_s']:9.3f} "
            f"{row['output_tokens_per_s']:9.1f} {row['share_in_model_generate']:7.0%} {prep:>10s} "
            f"{end_to_end:>9s} {_ratio(row, 'vs_pipeline'):>7s} {_ratio(row, 'end_to_end_vs_pipeline'):>8s} "
            f"{_ratio(row, 'vs_loop'):>7s} {_ratio(row, 'end_to_end_vs_loop'):>8s}"
        )
    lines.append("")
    lines.append("agreement with the per-image loop (greedy; same text on the rows the loop ran):")
    for entry in agreements:
        parts = [
            f"{variant} {entry[f'{variant}_vs_loop']:.0%}"
            for variant in ("operator", "pipeline")
            if f"{variant}_vs_loop" in entry
        ]
        lines.append(
            f"  {entry['family']:17s} batch {entry['batch_size']:3d}: {', '.join(parts)} "
            f"of {entry['rows_compared']} rows"
        )
    return "\n".join(lines)


def token_spread_lines(results: list[dict[str, Any]]) -> list[str]:
    """New tokens per row of the operator's runs: the lengths that the slots and the pipeline's batches decode."""
    return [
        f"  {row['family']:17s} batch {row['batch_size']:3d}: min {spread['min']}, median {spread['median']:g}, "
        f"mean {spread['mean']:.1f}, max {spread['max']}"
        for row in results
        if row["variant"] == "operator" and (spread := row.get("tokens_per_row"))
    ]


def summary_line(name: str, results: list[dict[str, Any]]) -> str:
    parts = [
        f"{row['family']} b{row['batch_size']} {row['images_per_s']:.2f} img/s "
        f"(x{row['vs_pipeline']:.2f} pipeline, x{row['vs_loop']:.2f} loop)"
        for row in results
        if row["variant"] == "operator" and "vs_pipeline" in row
    ]
    return f"SUMMARY {name}: operator " + "; ".join(parts)


def environment(device: str, dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    described = torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    return {
        "device": described,
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", choices=("real", "tiny"), default="real")
    parser.add_argument("--families", nargs="+", choices=sorted(REAL_SPECS), default=list(REAL_SPECS))
    parser.add_argument(
        "--batch-sizes", nargs="+", type=int, default=None, help="default 1 8 32 64 (tiny: 1 4)"
    )
    parser.add_argument(
        "--dtype", default="auto", help="auto (bfloat16 on CUDA, float32 on CPU) or a torch dtype"
    )
    parser.add_argument("--device", default=None, help="default cuda when available, else cpu")
    parser.add_argument("--new-tokens", type=int, default=None, help="default 64 (tiny: 8)")
    parser.add_argument(
        "--min-images", type=int, default=None, help="images per run at least; default 8 (tiny 4)"
    )
    parser.add_argument("--loop-images", type=int, default=None, help="default 8 (tiny 4)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads; default torch's own (tiny: 1, as ops that small only wait on a second thread)",
    )
    parser.add_argument(
        "--prompts-per-image",
        type=int,
        default=1,
        help=f"questions per image, 1 to {len(PROMPTS)}: rows are (image, prompt) pairs",
    )
    parser.add_argument(
        "--varied-lengths",
        action="store_true",
        help="rows stop at a probed stop token (varied lengths, at most --new-tokens) instead of all at --new-tokens",
    )
    parser.add_argument(
        "--length-window",
        type=int,
        default=4,
        help="batches per operator call, as the caption job's --length-window (default 4, the job's default)",
    )
    parser.add_argument("--json-out", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer images: a smoke run")
    args = parser.parse_args(argv)
    tiny = args.config == "tiny"
    if args.batch_sizes is None:
        args.batch_sizes = [1, 4] if tiny else [1, 8, 32, 64]
    if args.new_tokens is None:
        args.new_tokens = 8 if tiny else 64
    if args.min_images is None:
        args.min_images = 4 if tiny else 8
    if args.loop_images is None:
        args.loop_images = 4 if tiny else 8
    if args.threads is None and tiny:
        args.threads = 1
    if args.quick:
        args.repeats = 1
        args.min_images = min(args.min_images, 2)
        args.loop_images = min(args.loop_images, 2)
    if any(size < 1 for size in args.batch_sizes):
        parser.error(f"--batch-sizes must be positive, got {args.batch_sizes}")
    if args.new_tokens < 1 or args.repeats < 1 or args.loop_images < 1 or args.min_images < 1:
        parser.error("--new-tokens, --repeats, --loop-images and --min-images must be at least 1")
    if not 1 <= args.prompts_per_image <= len(PROMPTS):
        parser.error(f"--prompts-per-image: 1 to {len(PROMPTS)}, got {args.prompts_per_image}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = resolve_dtype(args.dtype, device)
    env = environment(device, dtype)
    print(
        f"gpu_generation: config {args.config}, {env['device']}, {env['dtype']}, torch {env['torch']}, "
        f"transformers {env['transformers']}, {args.new_tokens} new tokens per image, "
        f"batch sizes {args.batch_sizes}, {args.repeats} repeat(s), {args.prompts_per_image} prompt(s) per image",
        flush=True,
    )
    specs = model_specs(args.config)
    results: list[dict[str, Any]] = []
    agreements: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="llava-gpu-bench-") as work:
        for family in args.families:
            measured = measure_family(
                specs[family],
                device=device,
                dtype=dtype,
                batch_sizes=args.batch_sizes,
                new_tokens=args.new_tokens,
                min_images=args.min_images,
                loop_images=args.loop_images,
                repeats=args.repeats,
                prompts_per_image=args.prompts_per_image,
                varied_lengths=args.varied_lengths,
                window=args.length_window,
                work_dir=Path(work),
                log=lambda line: print(line, flush=True),
            )
            results.extend(measured["results"])
            agreements.extend(measured["agreement"])
    print()
    print(format_table(results, agreements))
    print()
    print("new tokens per row (operator):")
    print("\n".join(token_spread_lines(results)))
    print()
    print(summary_line("gpu_generation", results))
    if args.json_out is not None:
        report = {
            "benchmark": "gpu_generation",
            "config": args.config,
            "new_tokens": args.new_tokens,
            "prompts_per_image": args.prompts_per_image,
            "varied_lengths": args.varied_lengths,
            "length_window": args.length_window,
            "batch_sizes": args.batch_sizes,
            "repeats": args.repeats,
            "environment": env,
            "results": results,
            "agreement": agreements,
        }
        args.json_out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
