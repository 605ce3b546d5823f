"""Train one small LLaVA-family checkpoint on the synthetic shape tasks, on CPU, reproducibly from a seed.

    python -m llava_batch.training.train_tiny --family llava --out models/llava --seed 0

The model is the family's real transformers architecture, built by pipeline/families/tiny_models.py (own tokenizer, chat
template and processor). Prompts are rendered and images processed by the pipeline's own PreprocessForModel, so
training sees exactly what inference will. The loss covers only the answer tokens and the end-of-sequence token.
At the end the checkpoint is saved (float32 safetensors + processor) and its held-out exact-match accuracy,
measured through PreprocessForModel + Generate, goes into OUT/training.json with the settings and wall time.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llava_batch.operators.generation.collate import left_pad_collate
from llava_batch.operators.preprocess import PreprocessForModel
from llava_batch.pipeline.families.tiny_models import FAMILIES, IMAGE_SIZE, METADATA_FILE, build_tiny_model
from llava_batch.training.oracle import MAX_IMAGE_PIXELS, evaluate, image_payload
from llava_batch.training.shapes import Sample, samples, tokenizer_corpus

logger = logging.getLogger(__name__)

HELDOUT_SAMPLES = 200
MAX_CHECKPOINT_BYTES = 5 * 1024 * 1024
IGNORE_INDEX = -100  # label value the transformers loss skips


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    batch_size: int
    lr: float
    train_samples: int  # generated once and preprocessed once, then sampled in shuffled epochs
    text_hidden: int
    text_layers: int
    vision_hidden: int
    vision_layers: int | None  # None: the builder's default for the family
    image_size: int = IMAGE_SIZE  # the vision tower's input side (patches stay 8 pixels)
    warmup_fraction: float = 0.05
    weight_decay: float = 0.01


DEFAULT_SETTINGS: dict[str, TrainSettings] = {
    "llava": TrainSettings(
        steps=5000, batch_size=32, lr=2e-3, train_samples=12000,
        text_hidden=128, text_layers=2, vision_hidden=64, vision_layers=3, image_size=48,
    ),
    "llava_next": TrainSettings(
        steps=800, batch_size=32, lr=2e-3, train_samples=6000,
        text_hidden=128, text_layers=2, vision_hidden=64, vision_layers=3,
    ),
    "vipllava": TrainSettings(
        steps=3000, batch_size=32, lr=1e-3, train_samples=12000,
        text_hidden=128, text_layers=2, vision_hidden=48, vision_layers=None, image_size=48,
    ),
    "llava_interleave": TrainSettings(
        steps=3600, batch_size=32, lr=2e-3, train_samples=12000,
        text_hidden=128, text_layers=2, vision_hidden=64, vision_layers=2,
    ),
}  # fmt: skip


@dataclass
class Example:
    """One preprocessed training row: the processor's arrays plus the answer's token ids."""

    arrays: dict[str, np.ndarray]
    answer_ids: list[int]


def encode_examples(preprocess: PreprocessForModel, train: list[Sample]) -> list[Example]:
    """Each sample through the pipeline's own preprocessing; the target is " answer" then end-of-sequence."""
    tokenizer = preprocess.processor.tokenizer
    examples = []
    for sample in train:
        arrays = preprocess.preprocess_row(image_payload(sample), sample.prompt)
        # Every family's template puts a space between the generation prompt and the answer.
        answer_ids = tokenizer(" " + sample.answer, add_special_tokens=False)["input_ids"]
        examples.append(Example(arrays, list(answer_ids) + [tokenizer.eos_token_id]))
    return examples


def collate(examples: list[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Prompt + answer per row, right-padded (training needs no left padding); labels only on the answer."""
    rows, labels = [], []
    for example in examples:
        row = dict(example.arrays)
        pixels = row.get("pixel_values")
        if pixels is not None and pixels.dtype == np.uint8:
            # Only Generate expands PreprocessForModel's compact uint8 pixels; a model fed them here would learn
            # raw 0-255 values and read normalised ones at inference.
            raise ValueError("uint8 pixel values reached training: preprocess with compact_pixels=False")
        row["input_ids"] = np.concatenate(
            [example.arrays["input_ids"], np.asarray(example.answer_ids, np.int64)]
        )
        rows.append(row)
        labels.append([IGNORE_INDEX] * len(example.arrays["input_ids"]) + example.answer_ids)
    batch = left_pad_collate(rows, pad_token_id, padding_side="right")
    width = batch["input_ids"].shape[1]
    batch["labels"] = torch.tensor([row + [IGNORE_INDEX] * (width - len(row)) for row in labels])
    return batch


def learning_rate(step: int, settings: TrainSettings) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    warmup = max(1, int(settings.steps * settings.warmup_fraction))
    if step < warmup:
        return settings.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, settings.steps - warmup)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(family: str, out: Path, seed: int, settings: TrainSettings) -> dict[str, Any]:
    """Build, train and save the checkpoint; returns what training.json records (without the evaluation)."""
    from transformers import AutoModelForImageTextToText

    started = time.perf_counter()
    # 1. The family's model, with a tokenizer that knows the task's words.
    build_tiny_model(
        family,
        out,
        seed=seed,
        text_hidden=settings.text_hidden,
        text_layers=settings.text_layers,
        vision_hidden=settings.vision_hidden,
        vision_layers=settings.vision_layers,
        image_size=settings.image_size,
        tokenizer_corpus=tokenizer_corpus(),
    )
    (out / METADATA_FILE).unlink(missing_ok=True)  # it describes a random model; training.json replaces it

    # 2. Deterministic data, preprocessed once by the pipeline's own operator.
    # float32 pixels: the model is fed the batch directly, not through Generate, which expands uint8 ones.
    preprocess = PreprocessForModel(str(out), max_image_pixels=MAX_IMAGE_PIXELS, compact_pixels=False)
    examples = encode_examples(preprocess, samples(family, "train", settings.train_samples, seed=seed))
    pad_token_id = preprocess.processor.tokenizer.pad_token_id
    data_seconds = time.perf_counter() - started
    logger.info("%d training rows ready in %.1f s", len(examples), data_seconds)

    # 3. AdamW on every weight; the order of rows comes from the seed.
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_pretrained(str(out), dtype=torch.float32)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    order_rng = np.random.default_rng(seed)
    order: list[int] = []
    losses: list[float] = []
    for step in range(settings.steps):
        if len(order) < settings.batch_size:
            order.extend(order_rng.permutation(len(examples)).tolist())
        picked, order = order[: settings.batch_size], order[settings.batch_size :]
        batch = collate([examples[index] for index in picked], pad_token_id)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, settings)
        loss = model(**batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss))
        if step % 50 == 0 or step == settings.steps - 1:
            logger.info(
                "step %d/%d loss %.4f (%.0f s)", step, settings.steps, loss, time.perf_counter() - started
            )

    # 4. Save float32 weights next to the processor the builder wrote.
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    train_seconds = time.perf_counter() - started
    return {
        "family": family,
        "seed": seed,
        "steps": settings.steps,
        "settings": asdict(settings),
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "final_loss": float(np.mean(losses[-20:])),
        "data_seconds": round(data_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "torch_threads": torch.get_num_threads(),
    }


def checkpoint_bytes(out: Path) -> int:
    return sum(path.stat().st_size for path in out.iterdir() if path.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", required=True, choices=FAMILIES)
    parser.add_argument("--out", required=True, help="checkpoint folder, e.g. models/llava (overwritten)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, help="optimizer steps (default: the family's setting)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--train-samples", type=int)
    parser.add_argument("--heldout", type=int, default=HELDOUT_SAMPLES, help="held-out samples to score")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)

    overrides = {
        name: value
        for name, value in (
            ("steps", args.steps),
            ("batch_size", args.batch_size),
            ("lr", args.lr),
            ("train_samples", args.train_samples),
        )
        if value is not None
    }
    settings = replace(DEFAULT_SETTINGS[args.family], **overrides)
    out = Path(args.out)
    record = train(args.family, out, args.seed, settings)

    started = time.perf_counter()
    result = evaluate(str(out), samples(args.family, "heldout", args.heldout, seed=args.seed))
    record.update(
        heldout_samples=args.heldout,
        heldout_accuracy=result.accuracy,
        eval_seconds=round(time.perf_counter() - started, 1),
        command="python -m llava_batch.training.train_tiny "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
    )
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    size = checkpoint_bytes(out)
    record["checkpoint_bytes"] = size
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    for text, answer in result.mistakes():
        print(f"  wrong: {text!r} (expected {answer!r})")
    if size > MAX_CHECKPOINT_BYTES:
        print(f"checkpoint is {size} bytes, over the {MAX_CHECKPOINT_BYTES} byte limit", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
