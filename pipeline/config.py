"""Typed job configuration: dataclasses validated on construction, loadable from YAML and CLI flags.

Every error names the field, the bad value and what is allowed, and is raised before Ray starts.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml


class ConfigError(ValueError):
    """A setting is invalid; the message names the field and the allowed values."""


INPUT_FORMATS = ("auto", "images", "webdataset", "parquet")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")


@dataclass(frozen=True)
class ReplicaRange:
    """Number of model replicas: fixed (min == max) or an autoscaling range."""

    min: int
    max: int

    @classmethod
    def parse(cls, value: Any, field_name: str = "replicas") -> ReplicaRange:
        if isinstance(value, ReplicaRange):
            return value
        text = str(value).strip()
        try:
            if ":" in text:
                low, high = (int(part) for part in text.split(":", 1))
            else:
                low = high = int(text)
        except ValueError:
            raise ConfigError(
                f"{field_name}: {value!r} is not a replica count; use N (e.g. 2) or MIN:MAX (e.g. 1:4)"
            ) from None
        if low < 1 or high < low:
            raise ConfigError(f"{field_name}: {value!r} must satisfy 1 <= MIN <= MAX")
        return cls(low, high)

    def __str__(self) -> str:
        return str(self.min) if self.min == self.max else f"{self.min}:{self.max}"


@dataclass
class GenerationSettings:
    """Decoding settings passed to `model.generate`; greedy unless temperature > 0."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        _check_range("max_new_tokens", self.max_new_tokens, 1, 32768)
        _check_range("temperature", self.temperature, 0.0, 10.0)
        _check_range("top_p", self.top_p, 0.0, 1.0, low_inclusive=False)
        _check_type("seed", self.seed, int)

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        else:
            # Explicit so that a checkpoint's generation_config cannot switch sampling on behind our back.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs


@dataclass
class JobConfig:
    """The settings every job shares (input, model, decoding, resources, output); a job's config extends it.

    Field names match the CLI flags (dashes become underscores).
    """

    job_name: ClassVar[str] = "caption"

    input: str = ""
    output: str = ""
    model: str = ""
    input_format: str = "auto"
    image_column: str | None = None
    id_column: str | None = None
    keep_columns: tuple[str, ...] = ()
    limit: int | None = None
    sample: float | None = None
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 8
    batch_tokens: int | None = None
    length_window: int = 4
    replicas: ReplicaRange | str = "1"
    gpus_per_replica: int | None = None
    preprocess_workers: int = 1
    files_per_shard: int = 256
    dtype: str = "auto"
    attn_implementation: str = "sdpa"
    compile: bool = False
    share_image_prefix: bool = True
    continuous_batching: bool = True
    max_image_pixels: int = 64_000_000
    max_error_rate: float = 0.1
    s3_endpoint_url: str | None = None
    address: str | None = None
    overwrite: bool = False
    trust_remote_code: bool = False
    group_by: str | None = None
    order_by: str | None = None
    generation: GenerationSettings = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("input", "output", "model"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(
                    f"{name}: required (got {value!r}); pass --{name} or set it in the YAML config"
                )
        _check_choice("input_format", self.input_format, INPUT_FORMATS)
        self.keep_columns = _as_names("keep_columns", self.keep_columns)
        if self.limit is not None:
            _check_range("limit", self.limit, 1, 2**62)
        if self.sample is not None:
            _check_range("sample", self.sample, 0.0, 1.0, low_inclusive=False)
        self.replicas = ReplicaRange.parse(self.replicas)
        _check_range("batch_size", self.batch_size, 1, 4096)
        if self.batch_tokens is not None:
            _check_range("batch_tokens", self.batch_tokens, 1, 2**31)
        _check_range("length_window", self.length_window, 1, 64)
        _check_range("preprocess_workers", self.preprocess_workers, 1, 1024)
        _check_range("files_per_shard", self.files_per_shard, 1, 1_000_000)
        _check_range("max_image_pixels", self.max_image_pixels, 1, 2**40)
        _check_range("max_error_rate", self.max_error_rate, 0.0, 1.0)
        if self.gpus_per_replica is not None:
            _check_range("gpus_per_replica", self.gpus_per_replica, 0, 64)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        check_attention_installed(self.attn_implementation)
        _check_type("compile", self.compile, bool)
        _check_type("share_image_prefix", self.share_image_prefix, bool)
        _check_type("continuous_batching", self.continuous_batching, bool)
        _check_type("overwrite", self.overwrite, bool)
        _check_type("trust_remote_code", self.trust_remote_code, bool)
        self.generation = GenerationSettings(self.max_new_tokens, self.temperature, self.top_p, self.seed)
        check_grouping(self.group_by, self.order_by)
        if _same_or_nested(self.input, self.output):
            raise ConfigError(
                f"output: {self.output!r} is inside (or equal to) input {self.input!r}; results would be read "
                "back as inputs on the next run. Choose an output location outside the input."
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly view for the manifest, with credentials in URLs redacted."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        out["replicas"] = str(self.replicas)
        out["keep_columns"] = list(self.keep_columns)
        for name in ("input", "output", "model", "s3_endpoint_url", "address"):
            out[name] = redact_url(out[name])
        return out


@dataclass
class CaptionConfig(JobConfig):
    """Everything `llava-batch caption` needs: the shared job settings plus where each row's prompt comes from."""

    prompt: str = "Describe this image."
    prompts_file: str | None = None
    prompt_column: str | None = None
    conversation_column: str | None = None
    visual_prompt_column: str | None = None
    prompt_set: list = field(init=False, repr=False, default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ConfigError(f"prompt: must be a non-empty string (got {self.prompt!r})")
        check_template("prompt", self.prompt)
        sources = [
            name for name in ("prompts_file", "prompt_column", "conversation_column") if getattr(self, name)
        ]
        if len(sources) > 1:
            raise ConfigError(
                f"{sources[1]}: cannot be combined with {sources[0]}; choose one source of prompts"
            )
        if self.prompts_file is not None:
            from pipeline.prompt_sets import load_prompts_file

            self.prompt_set = load_prompts_file(self.prompts_file)


GROUP_BY_FOLDER = "folder"


def check_grouping(group_by: str | None, order_by: str | None) -> None:
    """`group_by` is `folder` (image folders) or a Parquet column; `order_by` orders a Parquet group's rows."""
    if group_by is not None and (not isinstance(group_by, str) or not group_by.strip()):
        raise ConfigError(f"group_by: {group_by!r} must be 'folder' or the name of a Parquet column")
    if order_by is not None and group_by is None:
        raise ConfigError(f"order_by: {order_by!r} orders the rows of a group; it needs --group-by")
    if order_by is not None and group_by == GROUP_BY_FOLDER:
        raise ConfigError(
            f"order_by: {order_by!r} cannot be used with --group-by folder; a folder's images are in file-name order"
        )


def check_attention_installed(attn_implementation: str) -> None:
    """flash_attention_2 needs the flash-attn package; without it every replica would fail to load the model
    after the cluster started and data began to flow, so refuse it up front."""
    import importlib.util

    if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ConfigError(
            "attn_implementation: 'flash_attention_2' needs the flash-attn package, which is not installed in "
            "this environment; install it (`pip install flash-attn`, on a CUDA machine, in the driver's and the "
            "workers' environment) or use --attn-implementation sdpa"
        )


def redact_url(value: str | None) -> str | None:
    """`scheme://user:secret@host/...` -> `scheme://***@host/...`: credentials never reach logs or manifests."""
    if not value or "@" not in value or "://" not in value:
        return value
    scheme, rest = value.split("://", 1)
    authority, slash, path = rest.partition("/")
    if "@" not in authority:
        return value
    return f"{scheme}://***@{authority.rsplit('@', 1)[1]}{slash}{path}"


def read_yaml_mapping(path: str | os.PathLike) -> dict[str, Any]:
    """The raw mapping of a YAML job file; an error names the file when it is missing or not a mapping."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file {str(path)!r} does not exist")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config: {str(path)!r} must hold a mapping of settings, got {type(loaded).__name__}"
        )
    return loaded


def load_config(cls: type, yaml_path: str | os.PathLike | None, overrides: dict[str, Any]) -> Any:
    """Build `cls` from a YAML file (optional) with CLI overrides on top; unknown keys are errors."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        loaded = read_yaml_mapping(path)
        # `job` and `schedule` describe the file, not the job's settings (pipeline.job_files reads them).
        job = loaded.pop("job", None)
        loaded.pop("schedule", None)
        expected = getattr(cls, "job_name", None)
        if job is not None and expected is not None and job != expected:
            raise ConfigError(
                f"job: {str(path)!r} is a {job!r} job file, not {expected!r}; run it with "
                f"`llava-batch {job} --config {path}`"
            )
        values.update({str(key).replace("-", "_"): value for key, value in loaded.items()})
    values.update({key: value for key, value in overrides.items() if value is not None})
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s) {unknown}; allowed: {sorted(known)}")
    for f in fields(cls):
        if f.name in values:
            values[f.name] = _coerce(f.name, values[f.name], f.type)
    return cls(**values)


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """YAML and flags both deliver strings or plain scalars; turn them into the declared type."""
    text = str(annotation)
    try:
        if text.startswith("int") and not isinstance(value, bool):
            return int(value)
        if text.startswith("float") and not isinstance(value, bool):
            return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a number") from None
    if text.startswith("tuple") and isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if text.startswith("bool") and isinstance(value, str):
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}: {value!r} is not a boolean; use true or false")
    return value


def _as_names(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{name}: {value!r} must be a list of column names (or one comma-separated string)")
    return tuple(value)


def check_template(name: str, text: str) -> None:
    from operators.prompts import template_fields

    try:
        template_fields(text)
    except ValueError as error:
        raise ConfigError(
            f"{name}: {text!r} is not a valid template ({error}); write literal braces as {{{{ and }}}}"
        ) from None


def _check_type(name: str, value: Any, expected: type) -> None:
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{name}: {value!r} must be of type {expected.__name__}")


def _check_range(name: str, value: Any, low: float, high: float, *, low_inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}: {value!r} must be a number between {low} and {high}")
    too_low = value < low if low_inclusive else value <= low
    if too_low or value > high:
        bracket = "[" if low_inclusive else "("
        raise ConfigError(f"{name}: {value!r} is out of range; allowed {bracket}{low}, {high}]")


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: {value!r} is not one of {', '.join(allowed)}")


def _same_or_nested(input_uri: str, output_uri: str) -> bool:
    """Local paths are compared as real paths: an output reached through a symlink (to the input, or below a
    symlinked parent) is still inside the input; realpath also resolves an output that does not exist yet."""
    from pipeline.storage import fixed_prefix, is_local, normalize_uri

    source = normalize_uri(fixed_prefix(input_uri))
    target = normalize_uri(output_uri)
    if is_local(input_uri) and is_local(output_uri):
        source = "file://" + os.path.realpath(source[len("file://") :])
        target = "file://" + os.path.realpath(target[len("file://") :])
    return (target.rstrip("/") + "/").startswith(source.rstrip("/") + "/")


def replace(config: Any, **changes: Any) -> Any:
    """dataclasses.replace that re-runs validation (used by tests and the CLI)."""
    return dataclasses.replace(config, **changes)
