"""Exactly-once output: rows are gathered per input shard on the driver and each complete shard is written as
one Parquet file, atomically. A shard's file existing means the shard is done; re-runs skip it.

Layout under the output URI: `part-<shard_id>.parquet` files (the data), `_job.json` (what produced them),
`_manifest.json` (written last). Files starting with `_` or `.` are ignored by Parquet readers.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from llava_batch.pipeline.io.storage import (
    StorageOptions,
    delete_file,
    join_uri,
    list_names,
    read_bytes,
    write_parquet_atomically,
    write_text,
)
from llava_batch.pipeline.run.columns import COLUMN_TYPES

logger = logging.getLogger(__name__)

PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
JOB_FILE = "_job.json"

# The columns every output has, in this order and with these types; job-specific columns follow.
OUTPUT_COLUMNS = (
    "id",
    "source",
    "prompt",
    "prompt_id",
    "generated_text",
    "num_input_tokens",
    "num_output_tokens",
    "finish_reason",
    "model",
    "error",
    "shard_id",
    # Last, so that outputs written before video inputs existed keep their column positions.
    "num_frames",
    "frame_timestamps",
)
OUTPUT_SCHEMA = pa.schema([(name, COLUMN_TYPES[name]) for name in OUTPUT_COLUMNS])
# Bookkeeping that travels with rows through the pipeline but is not output.
INTERNAL_COLUMNS = (
    "shard_rows",
    "num_image_tokens",
    "image_bytes",
    "model_inputs",
    "fields",
    "conversation",
    "generation",
    # instruct: per-input row counts and the turn-by-turn state
    "input_id",
    "input_rows",
    "question",
    "questions",
    "conversation_tokens",
    "_replica_stats",
)


def part_name(shard_id: str) -> str:
    return f"{PART_PREFIX}{shard_id}{PART_SUFFIX}"


def committed_shard_ids(output_uri: str, options: StorageOptions) -> set[str]:
    """One listing of the output folder: its size is the number of shards, not rows."""
    return {
        name[len(PART_PREFIX) : -len(PART_SUFFIX)]
        for name in list_names(output_uri, options)
        if name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)
    }


def check_job_identity(
    output_uri: str,
    fingerprint: dict,
    options: StorageOptions,
    *,
    overwrite: bool,
    defaults: dict | None = None,
) -> None:
    """Refuse to mix results of different settings (prompt, model, ...) in one output, unless overwriting.

    With `defaults`, a setting missing from an existing `_job.json` (written before that setting counted) is
    taken to have had its default there, or today's value where it has none (`input`), so upgrading does not
    orphan outputs made with the defaults.
    """
    from llava_batch.pipeline.config import ConfigError

    if JOB_FILE not in list_names(output_uri, options):
        write_text(join_uri(output_uri, JOB_FILE), json.dumps(fingerprint, indent=2, sort_keys=True), options)
        return
    existing = json.loads(read_bytes(join_uri(output_uri, JOB_FILE), options))
    if existing == fingerprint:
        return
    assumed = dict(existing)
    if defaults is not None:
        for key in set(fingerprint) - set(existing):
            assumed[key] = defaults.get(key, fingerprint[key])
    changed = sorted(
        key for key in set(assumed) | set(fingerprint) if assumed.get(key) != fingerprint.get(key)
    )
    if not overwrite and changed:
        raise ConfigError(
            f"output: {output_uri!r} holds results made with other settings (changed: {', '.join(changed)}); "
            "pass --overwrite to replace them, or choose a new output location"
        )
    write_text(join_uri(output_uri, JOB_FILE), json.dumps(fingerprint, indent=2, sort_keys=True), options)


def remove_temporary_files(output_uri: str, options: StorageOptions) -> None:
    """Half-written files of a killed run (local and other non-S3 stores write to `.tmp-*` then rename)."""
    for name in list_names(output_uri, options):
        if name.startswith(".tmp-"):
            delete_file(join_uri(output_uri, name), options)


def remove_parts(output_uri: str, shard_ids: set[str], options: StorageOptions) -> None:
    for shard_id in sorted(shard_ids):
        delete_file(join_uri(output_uri, part_name(shard_id)), options)


@dataclass
class CommitStats:
    rows: int = 0
    errors: int = 0
    output_tokens: int = 0
    shards: int = 0
    errors_by_kind: Counter = field(default_factory=Counter)
    replicas: ReplicaTime = field(default_factory=lambda: ReplicaTime())


@dataclass
class ReplicaTime:
    """Model replicas' time summed over the batches whose results reached the driver (llava_batch.operators.generation.replica)."""

    busy_s: float = 0.0
    idle_s: float = 0.0
    generate_s: float = 0.0
    prefills_saved: int = 0
    decode_row_steps: int = 0  # continuous batching: active rows summed over decoding steps ...
    decode_slot_steps: int = 0  # ... and slots summed over them
    replica_ids: set[str] = field(default_factory=set)
    memory_bytes: dict[str, int] = field(default_factory=dict)  # per replica: its model's weights and buffers

    def add(self, table: pa.Table) -> None:
        if "_replica_stats" not in table.column_names:
            return
        for value in pc.drop_null(table.column("_replica_stats")).to_pylist():
            stats = json.loads(value)
            self.busy_s += float(stats["busy_s"])
            self.idle_s += float(stats["idle_s"])
            self.generate_s += float(stats["generate_s"])
            self.prefills_saved += int(stats.get("prefills_saved", 0))
            self.decode_row_steps += int(stats.get("decode_row_steps", 0))
            self.decode_slot_steps += int(stats.get("decode_slot_steps", 0))
            self.replica_ids.add(str(stats["replica"]))
            if stats.get("memory_bytes") is not None:
                self.memory_bytes[str(stats["replica"])] = int(stats["memory_bytes"])

    @property
    def idle_share(self) -> float:
        total = self.busy_s + self.idle_s
        return self.idle_s / total if total > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "replicas": len(self.replica_ids),
            "busy_s": round(self.busy_s, 3),
            "generate_s": round(self.generate_s, 3),
            "idle_waiting_for_input_s": round(self.idle_s, 3),
            "idle_share": round(self.idle_share, 4),
            "image_prefills_saved": self.prefills_saved,
            # Share of decoding slots holding a row: finished rows freed theirs for waiting ones (None: no
            # continuous batching ran).
            "decode_slots_filled": (
                round(self.decode_row_steps / self.decode_slot_steps, 4) if self.decode_slot_steps else None
            ),
            # The largest replica's model in memory (get_memory_footprint; what --quantization shrinks).
            "model_memory_bytes": max(self.memory_bytes.values(), default=None),
        }


class ShardCommitter:
    """Buffers result rows by shard; writes a shard's file once all its rows have arrived.

    `shard_rows` on every row is the number of inputs the shard holds. By default each input is one row (times
    a fixed prompt count, folded into `shard_rows` upstream). A job whose inputs expand into a number of rows
    known only after a model ran (instruct: one row per parsed question) also carries `input_id` and
    `input_rows` (how many rows that input became): the shard is complete when all its inputs were seen and
    every one of their rows arrived. `output_table` turns the gathered rows into the job's output columns.
    """

    def __init__(
        self,
        output_uri: str,
        options: StorageOptions,
        output_table: Callable[[pa.Table], pa.Table] | None = None,
    ) -> None:
        self.output_uri = output_uri
        self.options = options
        self.output_table = output_table or to_output_table
        self.pending: dict[str, list[pa.Table]] = {}
        self.pending_rows: Counter = Counter()
        self.expected_rows: dict[str, int | None] = {}
        self.rows_per_input: dict[str, dict[str, int]] = {}
        self.committed: set[str] = set()
        self.stats = CommitStats()

    def add(self, table: pa.Table) -> None:
        # Before the split by shard: a batch's stats ride on one row, whichever shard that row belongs to.
        self.stats.replicas.add(table)
        shard_column = table.column("shard_id")
        per_input = "input_rows" in table.column_names
        # Arrow kernels, not Python lists: the driver touches every row of the job here (BENCHMARKS.md, driver
        # ceiling). A batch usually holds one shard, which needs no filtering.
        shard_ids = pc.unique(shard_column).to_pylist()
        for shard_id in shard_ids:
            rows = table if len(shard_ids) == 1 else table.filter(pc.equal(shard_column, shard_id))
            shard_rows = int(rows.column("shard_rows")[0].as_py())
            if shard_id in self.committed:
                if shard_rows == 0:
                    continue  # one more copy of an empty shard's marker (one per prompt)
                raise RuntimeError(f"shard {shard_id}: rows arrived after it was committed (duplicates)")
            if shard_rows == 0:  # the read stage's marker for a shard with no rows
                rows = rows.slice(0, 0)
                self.expected_rows[shard_id] = 0
            elif per_input:
                self.expected_rows[shard_id] = self._expected_from_inputs(shard_id, shard_rows, rows)
            else:
                self.expected_rows[shard_id] = shard_rows
            self.pending.setdefault(shard_id, []).append(rows)
            self.pending_rows[shard_id] += rows.num_rows
            wanted = self.expected_rows[shard_id]
            if wanted is not None and self.pending_rows[shard_id] >= wanted:
                self._commit(shard_id)

    def _expected_from_inputs(self, shard_id: str, shard_inputs: int, rows: pa.Table) -> int | None:
        """Rows the shard will have, once every one of its inputs has announced its row count; else None."""
        counts = self.rows_per_input.setdefault(shard_id, {})
        for input_id, input_rows in zip(
            rows.column("input_id").to_pylist(), rows.column("input_rows").to_pylist(), strict=True
        ):
            counts[input_id] = int(input_rows)
        return sum(counts.values()) if len(counts) >= shard_inputs else None

    def incomplete_shards(self) -> dict[str, tuple[int, int | None]]:
        """Shards with rows still missing: {shard_id: (rows seen, rows expected, None if not yet known)}."""
        return {
            shard_id: (self.pending_rows[shard_id], self.expected_rows[shard_id]) for shard_id in self.pending
        }

    def _commit(self, shard_id: str) -> None:
        gathered = pa.concat_tables(self.pending.pop(shard_id), promote_options="permissive")
        table = self.output_table(gathered)
        self.rows_per_input.pop(shard_id, None)
        seen, expected = self.pending_rows.pop(shard_id), self.expected_rows.pop(shard_id)
        if seen != expected or pc.count_distinct(table.column("id"), mode="all").as_py() != table.num_rows:
            raise RuntimeError(
                f"shard {shard_id}: {seen} rows for {expected} expected (duplicate ids); refusing to commit it"
            )
        write_parquet_atomically(
            table.sort_by("id"), join_uri(self.output_uri, part_name(shard_id)), self.options
        )
        self.committed.add(shard_id)
        errors = pc.drop_null(table.column("error")).to_pylist()
        self.stats.rows += table.num_rows
        self.stats.shards += 1
        self.stats.errors += len(errors)
        self.stats.errors_by_kind.update(error.split(":", 1)[0] for error in errors)
        if "num_output_tokens" in gathered.column_names:
            self.stats.output_tokens += int(pc.sum(gathered.column("num_output_tokens")).as_py() or 0)
        logger.debug("committed shard %s (%d rows)", shard_id, table.num_rows)


def to_output_table(table: pa.Table, schema: pa.Schema = OUTPUT_SCHEMA) -> pa.Table:
    """Fixed columns first, cast to their declared types (a block of only errors holds nulls of no type);
    then the job's other columns (`--keep-columns`), without the internal bookkeeping."""
    columns, fields = [], []
    for target in schema:
        if target.name in table.column_names:
            columns.append(table.column(target.name).cast(target.type))
        else:
            columns.append(pa.nulls(table.num_rows, target.type))
        fields.append(target)
    for name in table.column_names:
        if name not in schema.names and name not in INTERNAL_COLUMNS:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))
