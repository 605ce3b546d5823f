"""llava-batch: batch inference for LLaVA-family vision-language models on Ray Data and HF transformers.

    import llava_batch

    # A step of your own Ray Data pipeline:
    processor = llava_batch.build_processor(model="builtin:llava", prompt="What is in the image?")
    captioned = processor(dataset)            # your columns + generated_text, num_input_tokens, ... , error

    # A whole job (listing, shards, commit and resume, manifest), as `llava-batch caption` runs it:
    result = llava_batch.caption(input="s3://b/images/", output="s3://b/captions/", model="builtin:llava")
    print(result.summary)

Importing this package imports neither torch nor Ray; they load when a processor is built or a job runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["ConfigError", "JobResult", "Processor", "build_processor", "caption", "instruct", "run"]

if TYPE_CHECKING:
    from llava_batch.api import caption, instruct, run
    from llava_batch.pipeline.config import ConfigError
    from llava_batch.pipeline.run.runner import JobResult
    from llava_batch.processor import Processor, build_processor

# Where each public name lives; loaded on first use (PEP 562) so that `import llava_batch` stays light.
_LAZY = {
    "build_processor": "llava_batch.processor",
    "Processor": "llava_batch.processor",
    "caption": "llava_batch.api",
    "instruct": "llava_batch.api",
    "run": "llava_batch.api",
    "ConfigError": "llava_batch.pipeline.config",
    "JobResult": "llava_batch.pipeline.run.runner",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'llava_batch' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
