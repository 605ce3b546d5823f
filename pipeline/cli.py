"""The `llava-batch` command: maps job names to their run functions and every config field to a flag.

Flags are generated from the config dataclass, so YAML keys and flags can never drift apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from pipeline.config import CaptionConfig, ConfigError, load_config

logger = logging.getLogger("llava_batch")

EXIT_INVALID_SETTINGS = 2
EXIT_TOO_MANY_ERRORS = 3

FIELD_HELP = {
    "input": "images to process: a local folder, file://, s3://bucket/prefix/ or any fsspec URL",
    "output": "where Parquet results go (local folder, s3://, ...); must not be inside the input",
    "model": "hub id or local directory of a LLaVA-family checkpoint",
    "input_format": "auto (look at the input), images, webdataset or parquet",
    "image_column": "Parquet: column with image bytes, {bytes, path} structs, paths/URIs, or lists of them",
    "id_column": "Parquet: column with a stable row id (default: file path + row number)",
    "keep_columns": "comma-separated input fields to carry to the output",
    "limit": "process only the first N inputs (trial runs)",
    "sample": "process a seeded random fraction of the inputs (0 < FRACTION <= 1)",
    "prompt": "the user text sent with every image; {field} placeholders are filled from the row",
    "prompts_file": "YAML/JSON/TXT list of prompts: one output row per input and prompt",
    "prompt_column": "take each row's prompt from this input field",
    "conversation_column": "take each row's whole conversation (apply_chat_template messages) from this field",
    "visual_prompt_column": "field with a VipLLaVA visual prompt annotation to draw on the image",
    "max_new_tokens": "most tokens to generate per row",
    "temperature": "0 = greedy (default); > 0 samples",
    "top_p": "nucleus sampling mass when temperature > 0",
    "seed": "seed for sampling (per batch, from the row ids)",
    "batch_size": "most rows per generate() call on each replica",
    "batch_tokens": "also cap each generate() call at this many padded prompt tokens (rows x longest prompt)",
    "length_window": "batches a replica takes at once and regroups by prompt length (1 = no grouping)",
    "replicas": "model replicas: N, or MIN:MAX to autoscale",
    "gpus_per_replica": "GPUs per replica (0 = CPU; >1 shards the model with accelerate); default: 1 if GPUs exist",
    "preprocess_workers": "most CPU actors decoding and preprocessing images",
    "files_per_shard": "input files per shard, the unit of commit and resume",
    "dtype": "model dtype; auto = bfloat16 on GPUs that support it, float32 on CPU",
    "attn_implementation": "attention kernel: sdpa, eager, or flash_attention_2 (needs the flash-attn package)",
    "compile": "static KV cache + torch.compile of the decoding step (GPU; compiles once per batch shape)",
    "max_image_pixels": "images with more pixels become error rows (decompression-bomb guard)",
    "max_error_rate": "exit with code 3 (after writing everything) when a larger share of rows has errors",
    "s3_endpoint_url": "S3 endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS)",
    "address": "Ray cluster to join (default: RAY_ADDRESS, else a private local Ray)",
    "overwrite": "delete previous results in the output and start over",
    "trust_remote_code": "allow the checkpoint's own Python code to run (off unless you turn it on)",
}


def add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    parser.add_argument("--config", help="YAML file with any of the settings below; flags override it")
    for field in fields(config_class):
        if not field.init:
            continue
        flag = "--" + field.name.replace("_", "-")
        annotation = str(field.type)
        kwargs: dict[str, Any] = {"default": None, "help": FIELD_HELP.get(field.name, "")}
        if annotation.startswith("bool"):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif annotation.startswith("int"):
            kwargs["type"] = int
        elif annotation.startswith("float"):
            kwargs["type"] = float
        parser.add_argument(flag, **kwargs)


def config_overrides(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    return {field.name: getattr(args, field.name) for field in fields(config_class) if field.init}


def run_caption_command(args: argparse.Namespace) -> int:
    from jobs.caption import run_caption
    from pipeline.ray_cluster import shutdown

    config = load_config(CaptionConfig, args.config, config_overrides(args, CaptionConfig))
    try:
        result = run_caption(config)
    finally:
        shutdown()
    print(result.summary)
    if result.error_rate > config.max_error_rate:
        print(
            f"llava-batch: error: {result.errors} of {result.rows} rows ({result.error_rate:.1%}) have errors, over "
            f"--max-error-rate {config.max_error_rate:.1%}; the rows were written (see the `error` column). "
            "Raise --max-error-rate if this is expected.",
            file=sys.stderr,
        )
        return EXIT_TOO_MANY_ERRORS
    return 0


def run_make_tiny_model(args: argparse.Namespace) -> int:
    from pipeline.tiny_models import build_tiny_model

    path = build_tiny_model(args.family, args.out, seed=args.seed)
    print(f"tiny {args.family} model written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from pipeline.tiny_models import FAMILIES

    parser = argparse.ArgumentParser(
        prog="llava-batch", description="Batch inference for LLaVA-family models on Ray"
    )
    parser.add_argument("--log-level", default=os.environ.get("LLAVA_BATCH_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)

    caption = commands.add_parser("caption", help="caption every image under a prefix")
    add_config_flags(caption, CaptionConfig)
    caption.set_defaults(handler=run_caption_command)

    tiny = commands.add_parser(
        "make-tiny-model", help="build a tiny random-weight model offline (smoke tests)"
    )
    tiny.add_argument("--family", required=True, choices=FAMILIES)
    tiny.add_argument("--out", required=True, help="directory to write the checkpoint to")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(handler=run_make_tiny_model)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except ConfigError as error:
        print(f"llava-batch: error: {error}", file=sys.stderr)
        return EXIT_INVALID_SETTINGS
    except (FileNotFoundError, NotADirectoryError) as error:
        print(f"llava-batch: error: {error}", file=sys.stderr)
        return EXIT_INVALID_SETTINGS


if __name__ == "__main__":
    sys.exit(main())
