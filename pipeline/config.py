"""Typed job configuration: dataclasses validated on construction, loadable from YAML and CLI flags.

Every error names the field, the bad value and what is allowed, and is raised before Ray starts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml


class ConfigError(ValueError):
    """A setting is invalid; the message names the field and the allowed values."""


INPUT_FORMATS = ("auto", "images", "webdataset", "parquet")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
QUANTIZATIONS = ("none", "8bit", "4bit")

REQUIRED_SETTINGS = ("input", "output", "model")

# Settings that decide how, where or how fast a job runs, never what an output row holds. Every other field is
# part of the job's fingerprint (`job_fingerprint`), so a new field counts unless it is declared here.
RUN_ONLY_SETTINGS = frozenset(
    {
        # Resources and batching. They can move floating-point results only as far as the project treats as
        # invariant (batched rows equal rows alone in float32: tests/operators/test_batch_invariance.py).
        "batch_size",
        "batch_tokens",
        "length_window",
        "replicas",
        "gpus_per_replica",
        "preprocess_workers",
        # Ways of running the same decoding, held to equal outputs by their tests.
        "attn_implementation",
        "compile",
        "share_image_prefix",
        "continuous_batching",
        # Where the job runs and how storage is reached (not what is read: `input` counts).
        "address",
        "s3_endpoint_url",
        "output",
        # What happens around the rows: old results, the exit code, permission to run a checkpoint's code.
        "overwrite",
        "max_error_rate",
        "trust_remote_code",
        # Which inputs run, not what a row holds: shard ids carry the selection (llava_batch.pipeline.io.shards), so a full run
        # after a trial redoes the trial's shards and the runner removes their parts first.
        "limit",
        "sample",
    }
)


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


def setting(default: Any, help: str, *, before_it_existed: Any = MISSING) -> Any:
    """A config field with its help text: the CLI's flags and help, the docs' table and the fingerprint all read
    the fields, so a new setting is one line here. `before_it_existed`: the behaviour of outputs made before the
    setting was added, when that differs from its default (fingerprint_defaults)."""
    metadata = {"help": help}
    if before_it_existed is not MISSING:
        metadata["before_it_existed"] = before_it_existed
    return field(default=default, metadata=metadata)


def post_init_next(instance: Any, cls: type) -> None:
    """Run the next `__post_init__` in the MRO: settings classes combine (a job's config, the API's processor)."""
    following = getattr(super(cls, instance), "__post_init__", None)
    if following is not None:
        following()


@dataclass
class ModelSettings:
    """What a call of the model needs: the checkpoint, decoding, batching and the replicas' resources.

    The Python API's processor takes exactly these plus its prompt source; a job's config adds input and output.
    Field names match the CLI flags (dashes become underscores).
    """

    model: str = setting("", "hub id or local directory of a LLaVA-family checkpoint")
    max_new_tokens: int = setting(64, "most tokens to generate per row")
    temperature: float = setting(0.0, "0 = greedy (default); > 0 samples")
    top_p: float = setting(1.0, "nucleus sampling mass when temperature > 0")
    seed: int = setting(
        0, "seed for sampling (per row, with the row id; per batch where model.generate runs)"
    )
    batch_size: int = setting(8, "most rows decoded at once on each replica (its decoding slots)")
    batch_tokens: int | None = setting(
        None, "also cap each generate() call at this many padded prompt tokens (rows x longest prompt)"
    )
    length_window: int = setting(
        4, "batches a replica takes at once and regroups by prompt length (1 = no grouping)"
    )
    replicas: ReplicaRange | str = setting("1", "model replicas: N, or MIN:MAX to autoscale")
    gpus_per_replica: int | None = setting(
        None, "GPUs per replica (0 = CPU; >1 shards the model with accelerate); default: 1 if GPUs exist"
    )
    preprocess_workers: int = setting(1, "most CPU actors decoding and preprocessing images")
    dtype: str = setting("auto", "model dtype; auto = bfloat16 on GPUs that support it, float32 on CPU")
    quantization: str = setting(
        "none",
        "load the replica's weights quantized with bitsandbytes: 8bit (LLM.int8) or 4bit (NF4, computing in "
        "--dtype); none keeps --dtype (needs the bitsandbytes package: pip install llava-batch[quant])",
    )
    attn_implementation: str = setting(
        "sdpa", "attention kernel: sdpa, eager, or flash_attention_2 (needs the flash-attn package)"
    )
    compile: bool = setting(
        False,
        "torch.compile of the decoding step on a static KV cache (GPU or CPU; CUDA graphs on GPU; compiled once per shape; pays off on long GPU runs of small models)",
    )
    share_image_prefix: bool = setting(
        True,
        "rows showing the same image(s) under several prompts prefill the image once (not with --compile)",
    )
    continuous_batching: bool = setting(
        True,
        "a row that stops frees its decoding slot for the next waiting row (with --compile: in a static cache)",
    )
    max_image_pixels: int = setting(
        64_000_000, "images with more pixels become error rows (decompression-bomb guard)"
    )
    exact_decode: bool = setting(
        False,
        "decode JPEGs in full; by default the decoder shrinks them 2-8x where the processor's target size still fits (about 10x faster for 12 MP photos, pixels within a few levels)",
        # Outputs made before reduced decoding existed were decoded in full: a resume must not mix the two.
        before_it_existed=True,
    )
    video_frames: int = setting(
        8, "a video input shows the model this many frames, sampled uniformly over its duration (one turn)"
    )
    trust_remote_code: bool = setting(
        False, "allow the checkpoint's own Python code to run (off unless you turn it on)"
    )
    generation: GenerationSettings = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _check_required("model", self.model)
        self.replicas = ReplicaRange.parse(self.replicas)
        _check_range("batch_size", self.batch_size, 1, 4096)
        if self.batch_tokens is not None:
            _check_range("batch_tokens", self.batch_tokens, 1, 2**31)
        _check_range("length_window", self.length_window, 1, 64)
        _check_range("preprocess_workers", self.preprocess_workers, 1, 1024)
        _check_range("max_image_pixels", self.max_image_pixels, 1, 2**40)
        _check_range("video_frames", self.video_frames, 1, 256)
        if self.gpus_per_replica is not None:
            _check_range("gpus_per_replica", self.gpus_per_replica, 0, 64)
        _check_choice("dtype", self.dtype, DTYPES)
        _check_choice("attn_implementation", self.attn_implementation, ATTN_IMPLEMENTATIONS)
        check_attention_installed(self.attn_implementation)
        _check_choice("quantization", self.quantization, QUANTIZATIONS)
        check_quantization_installed(self.quantization)
        for name in (
            "compile",
            "share_image_prefix",
            "continuous_batching",
            "trust_remote_code",
            "exact_decode",
        ):
            _check_type(name, getattr(self, name), bool)
        if self.quantization != "none" and self.compile:
            # transformers never compiles a bitsandbytes model (its quantizer is not `is_compileable`): --compile
            # would silently give a static cache and no compiled step.
            raise ConfigError(
                f"quantization: {self.quantization!r} cannot run with --compile (transformers does not compile "
                "bitsandbytes-quantized models); drop --compile or use --quantization none"
            )
        self.generation = GenerationSettings(self.max_new_tokens, self.temperature, self.top_p, self.seed)
        post_init_next(self, ModelSettings)


@dataclass
class JobConfig(ModelSettings):
    """The settings every job shares: the model call's (ModelSettings), plus input, output and how the job runs.

    A job's config extends it with its own fields.
    """

    job_name: ClassVar[str] = "caption"
    # A job adds its own fields that cannot change a row (e.g. instruct's export_json) to this set.
    run_only_settings: ClassVar[frozenset[str]] = RUN_ONLY_SETTINGS

    input: str = setting(
        "",
        "what to process: image folders (a folder or prefix of image files, subfolders too), WebDataset .tar shards or Parquet tables; a local path, file://, s3://bucket/prefix/ or any fsspec URL",
    )
    output: str = setting(
        "", "where Parquet results go (local folder, s3://, ...); must not be inside the input"
    )
    input_format: str = setting("auto", "auto (look at the input), images, webdataset or parquet")
    image_column: str | None = setting(
        None, "Parquet: column with image bytes, {bytes, path} structs, paths/URIs, or lists of them"
    )
    id_column: str | None = setting(
        None, "Parquet: column with a stable row id (default: file path + row number)"
    )
    keep_columns: tuple[str, ...] = setting((), "comma-separated input fields to carry to the output")
    limit: int | None = setting(None, "process only the first N inputs (trial runs)")
    sample: float | None = setting(None, "process a seeded random fraction of the inputs (0 < FRACTION <= 1)")
    files_per_shard: int = setting(256, "input files per shard, the unit of commit and resume")
    max_error_rate: float = setting(
        0.1, "exit with code 3 (after writing everything) when a larger share of rows has errors"
    )
    s3_endpoint_url: str | None = setting(
        None, "S3 endpoint (default: AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, else AWS)"
    )
    address: str | None = setting(
        None, "Ray cluster to join (default: RAY_ADDRESS, else a private local Ray)"
    )
    overwrite: bool = setting(False, "delete previous results in the output and start over")
    group_by: str | None = setting(
        None, "one row per group of images: 'folder' (image folders) or a Parquet column (equal values)"
    )
    order_by: str | None = setting(
        None, "Parquet with --group-by: order a group's images by this column (default: file order)"
    )

    def __post_init__(self) -> None:
        for name in ("input", "output"):
            _check_required(name, getattr(self, name))
        _check_choice("input_format", self.input_format, INPUT_FORMATS)
        self.keep_columns = _as_names("keep_columns", self.keep_columns)
        if self.limit is not None:
            _check_range("limit", self.limit, 1, 2**62)
        if self.sample is not None:
            _check_range("sample", self.sample, 0.0, 1.0, low_inclusive=False)
        _check_range("files_per_shard", self.files_per_shard, 1, 1_000_000)
        _check_range("max_error_rate", self.max_error_rate, 0.0, 1.0)
        _check_type("overwrite", self.overwrite, bool)
        check_grouping(self.group_by, self.order_by)
        if _same_or_nested(self.input, self.output):
            raise ConfigError(
                f"output: {self.output!r} is inside (or equal to) input {self.input!r}; results would be read "
                "back as inputs on the next run. Choose an output location outside the input."
            )
        super().__post_init__()

    @property
    def is_trial(self) -> bool:
        """A --limit/--sample run: part of the input, to try settings before the full run."""
        return self.limit is not None or self.sample is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-friendly view for the manifest, with credentials in URLs redacted."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.init}
        out["replicas"] = str(self.replicas)
        out["keep_columns"] = list(self.keep_columns)
        for name in ("input", "output", "model", "s3_endpoint_url", "address"):
            out[name] = redact_url(out[name])
        return out


def job_fingerprint(config: JobConfig) -> dict[str, Any]:
    """The settings that can change an output row: every field except the class's declared run-only settings.

    Derived from the fields, so a field added to a config counts by default. Values are as `to_dict` writes them
    (credentials redacted) and JSON-normalised, so they compare equal to the copy read back from `_job.json`.
    """
    settings = {
        name: value for name, value in config.to_dict().items() if name not in config.run_only_settings
    }
    return _json_plain(settings)


def fingerprint_defaults(config_class: type) -> dict[str, Any]:
    """Defaults of the fingerprinted fields: a `_job.json` written before a field counted was made with them.
    Required settings have no default to assume (llava_batch.pipeline.run.commit.check_job_identity takes today's value)."""
    defaults = {}
    for f in fields(config_class):
        if not f.init or f.name in config_class.run_only_settings or f.name in REQUIRED_SETTINGS:
            continue
        if "before_it_existed" in f.metadata:
            defaults[f.name] = f.metadata["before_it_existed"]
        elif f.default is not MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not MISSING:
            defaults[f.name] = f.default_factory()
    return _json_plain(defaults)


def _json_plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


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


def check_quantization_installed(quantization: str) -> None:
    """8bit / 4bit need bitsandbytes in the driver's and the replicas' environment; refuse before Ray starts."""
    import importlib.util

    if quantization != "none" and importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(
            f"quantization: {quantization!r} needs the bitsandbytes package, which is not installed in this "
            "environment; install it with `pip install llava-batch[quant]` (or `pip install bitsandbytes`) "
            "or use --quantization none"
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
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"config: {path}: not a UTF-8 text file ({error.reason} at byte {error.start})"
        ) from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config: {path}: not valid YAML ({yaml_problem(error)})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"config: {str(path)!r} must hold a mapping of settings, got {type(loaded).__name__}"
        )
    return loaded


def yaml_problem(error: yaml.YAMLError) -> str:
    """`line L, column C: problem` (1-based, as editors count) from PyYAML's multi-line message."""
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None) or getattr(error, "context", None) or str(error)
    problem = " ".join(str(problem).split())
    if mark is None:
        return problem
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"


def load_config(cls: type, yaml_path: str | os.PathLike | None, overrides: dict[str, Any]) -> Any:
    """Build `cls` from a YAML file (optional) with CLI overrides on top; unknown keys are errors."""
    values: dict[str, Any] = {}
    if yaml_path is not None:
        path = Path(yaml_path)
        loaded = read_yaml_mapping(path)
        # `job` and `schedule` describe the file, not the job's settings (llava_batch.cli.job_files reads them).
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
    types_by_name = field_types(cls)
    for name, value in values.items():
        values[name] = _coerce(name, value, types_by_name[name])
    try:
        return cls(**values)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        # A value of a shape no check foresaw (a mapping where a name belongs, ...): still one line, exit 2.
        raise ConfigError(f"config: {' '.join(str(error).split())}") from None


def field_types(cls: type) -> dict[str, Any]:
    """Each settable field's declared type, with `| None` dropped (None always means "not set")."""
    hints = typing.get_type_hints(cls)
    return {f.name: _without_none(hints[f.name]) for f in fields(cls) if f.init}


def _without_none(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        return rest[0] if len(rest) == 1 else annotation
    return annotation


def _coerce(name: str, value: Any, kind: Any) -> Any:
    """YAML and flags both deliver strings or plain scalars; turn them into the declared type."""
    if kind is bool:
        return _as_bool(name, value)
    if kind is int:
        return _as_int(name, value)
    if kind is float:
        return _as_float(name, value)
    if typing.get_origin(kind) is tuple and isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _as_bool(name: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value  # __post_init__ names anything that is not a bool
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}: {value!r} is not a boolean; use true or false")


def _as_int(name: str, value: Any) -> int:
    """Whole numbers only: `3`, `"3"` and `3.0` are 3; `3.7` is refused rather than cut to 3."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
        try:
            float(value)
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not a number") from None
    if isinstance(value, (str, float)):
        raise ConfigError(f"{name}: {value!r} is not a whole number")
    raise ConfigError(f"{name}: {value!r} is not a number")


def _as_float(name: str, value: Any) -> float:
    """Finite numbers only: nan compares false with every bound, so it would pass any range check."""
    if isinstance(value, bool):
        raise ConfigError(f"{name}: {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name}: {value!r} is not a finite number")
    return number


def _as_names(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value):
        raise ConfigError(f"{name}: {value!r} must be a list of column names (or one comma-separated string)")
    return tuple(value)


def check_template(name: str, text: str) -> None:
    from llava_batch.operators.prompts import template_fields

    try:
        template_fields(text)
    except ValueError as error:
        raise ConfigError(
            f"{name}: {text!r} is not a valid template ({error}); write literal braces as {{{{ and }}}}"
        ) from None


def _check_required(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"{name}: required (got {value!r}); pass --{name.replace('_', '-')} or set it in the YAML config"
        )


def _check_type(name: str, value: Any, expected: type) -> None:
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{name}: {value!r} must be of type {expected.__name__}")


def _check_range(name: str, value: Any, low: float, high: float, *, low_inclusive: bool = True) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
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
    from llava_batch.pipeline.io.storage import fixed_prefix, is_local, normalize_uri

    source = normalize_uri(fixed_prefix(input_uri))
    target = normalize_uri(output_uri)
    if is_local(input_uri) and is_local(output_uri):
        source = "file://" + os.path.realpath(source[len("file://") :])
        target = "file://" + os.path.realpath(target[len("file://") :])
    return (target.rstrip("/") + "/").startswith(source.rstrip("/") + "/")


def replace(config: Any, **changes: Any) -> Any:
    """dataclasses.replace that re-runs validation (used by tests and the CLI)."""
    return dataclasses.replace(config, **changes)
