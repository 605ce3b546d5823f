"""The `llava-batch` command: maps job names to their run functions and every config field to a flag.

Flags are generated from the config dataclass, so YAML keys and flags can never drift apart.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shlex
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import MISSING, fields
from typing import Any

import yaml

from llava_batch.cli.submit import ClusterUnreachable
from llava_batch.pipeline.config import ConfigError, field_types, load_config
from llava_batch.pipeline.io.storage import StoreError
from llava_batch.pipeline.run.output_lock import OutputLocked
from llava_batch.pipeline.run.runner import Interrupted, JobInterrupted

logger = logging.getLogger("llava_batch")

EXIT_INVALID_SETTINGS = 2
EXIT_TOO_MANY_ERRORS = 3
EXIT_OUTPUT_LOCKED = 4  # another run of the job holds the output's lock
EXIT_CLUSTER_UNREACHABLE = 5


def add_config_flags(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per settable field. Values stay strings here: llava_batch.pipeline.config.load_config converts them with the
    same rules as YAML values, so a bad one is a one-line error naming the field, not an argparse usage dump."""
    parser.add_argument("--config", help="YAML file with any of the settings below; flags override it")
    types_by_name = field_types(config_class)
    for field in fields(config_class):
        if not field.init:
            continue
        flag = "--" + field.name.replace("_", "-")
        kwargs: dict[str, Any] = {"default": None, "help": field_help(field)}
        if types_by_name[field.name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = field.name.upper()
        parser.add_argument(flag, **kwargs)


def field_help(field: Any) -> str:
    """The field's help (its `setting(...)` metadata) plus its default, unless the text already says what happens
    when unset."""
    text = field.metadata.get("help", "")
    default = field.default
    if default is MISSING or default in (None, "", ()) or "default" in text:
        return text
    if isinstance(default, bool):
        default = "on" if default else "off"
    # argparse formats help with %-style: a literal % in a default must be doubled.
    return f"{text} (default: {str(default).replace('%', '%%')})"


def config_overrides(args: argparse.Namespace, config_class: type) -> dict[str, Any]:
    return {field.name: getattr(args, field.name) for field in fields(config_class) if field.init}


def run_job(job: str, config: Any) -> int:
    """Run one job (a name in llava_batch.jobs.JOBS) in this process and print its summary; the exit code."""
    from llava_batch.api import run_config

    return report_result(run_config(job, config), config.max_error_rate)


def job_command(job: str) -> Callable[[argparse.Namespace], int]:
    """The handler of `llava-batch JOB`: the config from --config and the flags, then the run."""
    from llava_batch.jobs import JOBS

    def handler(args: argparse.Namespace) -> int:
        config_class = JOBS[job].config_class
        return run_job(job, load_config(config_class, args.config, config_overrides(args, config_class)))

    return handler


def report_result(result: Any, max_error_rate: float) -> int:
    """Print the run's summary; exit code 3 when more rows than allowed have errors."""
    print(result.summary)
    if result.error_rate > max_error_rate:
        print(
            f"llava-batch: error: {result.errors} of {result.rows} rows ({result.error_rate:.1%}) have errors, over "
            f"--max-error-rate {max_error_rate:.1%}; the rows were written (see the `error` column). "
            "Raise --max-error-rate if this is expected.",
            file=sys.stderr,
        )
        return EXIT_TOO_MANY_ERRORS
    return 0


def run_make_tiny_model(args: argparse.Namespace) -> int:
    from llava_batch.pipeline.families.tiny_models import build_tiny_model

    path = build_tiny_model(args.family, args.out, seed=args.seed, geometry=args.geometry)
    print(f"tiny {args.family} model ({args.geometry} geometry) written to {path}")
    return 0


def run_job_file(path: str) -> int:
    """Run a job file (any job in llava_batch.jobs.JOBS, from its `job:` key) once, in this process."""
    from llava_batch.cli.job_files import load_job_file

    job_file = load_job_file(path)
    return run_job(job_file.job, job_file.config)


def run_submit_command(args: argparse.Namespace) -> int:
    from llava_batch.cli.submit import RuntimeEnvOptions, parse_env_vars, submit

    runtime_env = RuntimeEnvOptions(
        file=args.runtime_env,
        pip=tuple(args.pip or ()),
        env_vars=parse_env_vars(args.env or []),
        working_dir=args.working_dir,
    )
    job_id = submit(args.config, args.address, ship_code=args.ship_code, runtime_env=runtime_env)
    print(job_id)
    print(f"follow it with: {follow_up_commands(job_id, args.address)}", file=sys.stderr)
    return 0


def follow_up_commands(job_id: str, address: str | None) -> str:
    """The status and logs commands for a submitted job, naming the same cluster as the submit did."""
    where = f" --address {shlex.quote(address)}" if address else ""
    job = shlex.quote(job_id)
    return f"llava-batch status {job}{where} --wait; llava-batch logs {job}{where}"


# Ray's own ids (raysubmit_...) and ours (llava-batch-caption-...): no slashes, spaces or empty ids, which would
# make a different request (an empty id asks for the list of all jobs).
JOB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def check_job_id(job_id: str) -> None:
    if not JOB_ID.fullmatch(job_id):
        raise ConfigError(
            f"job_id: {job_id!r} is not a job id (letters, digits, _ . : -); `llava-batch submit` prints it, "
            "`ray job list` lists them"
        )


def run_status_command(args: argparse.Namespace) -> int:
    from llava_batch.cli.submit import job_status, wait_for_job

    check_job_id(args.job_id)
    if args.wait:
        wait_for_job(args.job_id, args.address, timeout_s=args.timeout)
    status, message = job_status(args.job_id, args.address)
    print(f"{args.job_id} {status}" + (f": {message}" if message else ""))
    if args.wait and status != "SUCCEEDED":
        return 1
    return 0


def run_logs_command(args: argparse.Namespace) -> int:
    from llava_batch.cli.submit import job_logs

    check_job_id(args.job_id)
    if args.follow:
        from llava_batch.cli.submit import follow_logs

        def write(text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        status = follow_logs(args.job_id, args.address, write)
        print(f"llava-batch: job {args.job_id} ended {status}", file=sys.stderr)
        return 0 if status == "SUCCEEDED" else 1
    sys.stdout.write(job_logs(args.job_id, args.address))
    return 0


def run_stop_command(args: argparse.Namespace) -> int:
    from llava_batch.cli.submit import job_status, stop_job

    check_job_id(args.job_id)
    stopped = stop_job(args.job_id, args.address)
    status, _ = job_status(args.job_id, args.address)
    print(f"{args.job_id} {'stop requested' if stopped else 'had already ended'}: {status}")
    return 0


def run_schedule_command(args: argparse.Namespace) -> int:
    from llava_batch.cli.job_files import load_job_file
    from llava_batch.cli.schedule import run_schedule

    load_job_file(args.config)  # a broken file fails now, not at the first tick hours later
    if args.max_runs is not None and args.max_runs < 1:
        raise ConfigError(f"max_runs: {args.max_runs} must be at least 1 (leave it out to run forever)")

    def run_once() -> int:
        # A scheduler outlives failed runs: each is logged with its exit code and the next tick comes anyway.
        try:
            if args.address:
                return submit_and_wait(args.config, args.address, ship_code=args.ship_code)
            return run_job_file(args.config)
        except OutputLocked as error:
            logger.warning("run skipped: %s", error)
            return EXIT_OUTPUT_LOCKED
        except ClusterUnreachable as error:
            logger.error("run skipped: %s", error)
            return EXIT_CLUSTER_UNREACHABLE
        except ConfigError as error:
            logger.error("run failed: %s", error)
            return EXIT_INVALID_SETTINGS
        except Exception:
            logger.exception("run failed")
            return 1

    if args.once:
        return run_once()
    return run_schedule(load_job_file(args.config), run_once, max_runs=args.max_runs)


def submit_and_wait(config: str, address: str, *, ship_code: bool) -> int:
    from llava_batch.cli.submit import submit, wait_for_job

    job_id = submit(config, address, ship_code=ship_code)
    status = wait_for_job(job_id, address, poll_s=2.0)
    logger.info("cluster job %s ended %s (llava-batch logs %s)", job_id, status, job_id)
    return 0 if status == "SUCCEEDED" else 1


def run_run_command(args: argparse.Namespace) -> int:
    return run_job_file(args.config)


def add_cluster_commands(commands: Any) -> None:
    run = commands.add_parser(
        "run", help="run a job file once; the job comes from its `job:` key (default caption)"
    )
    run.add_argument("--config", required=True, help="job YAML file")
    run.set_defaults(handler=run_run_command)

    address_help = "the head's dashboard, http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS)"
    submit = commands.add_parser("submit", help="run a job file on a Ray cluster (Job Submission API)")
    submit.add_argument("--config", required=True, help="job YAML file; shipped with the job")
    submit.add_argument("--address", help=address_help)
    submit.add_argument(
        "--ship-code",
        action="store_true",
        help="build a wheel of this checkout (pip wheel --no-deps) and install it for the job (runtime_env pip), "
        "over the cluster's own install",
    )
    submit.add_argument(
        "--runtime-env",
        metavar="FILE",
        help="a Ray runtime_env as YAML or JSON (pip, env_vars, working_dir, ...)",
    )
    submit.add_argument(
        "--pip",
        action="append",
        metavar="PACKAGE",
        help="a pip requirement to install for the job (repeatable)",
    )
    submit.add_argument(
        "--env",
        action="append",
        metavar="NAME=VALUE",
        help="an environment variable for the job (repeatable)",
    )
    submit.add_argument(
        "--working-dir",
        metavar="DIR",
        help="a local folder shipped with the job (the job file is added to it)",
    )
    submit.set_defaults(handler=run_submit_command)

    stop = commands.add_parser("stop", help="stop a submitted job (committed shards stay; re-submit resumes)")
    stop.add_argument("job_id")
    stop.add_argument("--address", help=address_help)
    stop.set_defaults(handler=run_stop_command)

    status = commands.add_parser("status", help="status of a submitted job")
    status.add_argument("job_id")
    status.add_argument("--address", help=address_help)
    status.add_argument("--wait", action="store_true", help="wait until it ends; exit 1 unless it SUCCEEDED")
    status.add_argument("--timeout", type=float, default=None, help="with --wait: give up after SECONDS")
    status.set_defaults(handler=run_status_command)

    logs = commands.add_parser("logs", help="output of a submitted job so far")
    logs.add_argument("job_id")
    logs.add_argument("--address", help=address_help)
    logs.add_argument(
        "--follow",
        action="store_true",
        help="stream new output until the job ends; exit 1 unless it SUCCEEDED",
    )
    logs.set_defaults(handler=run_logs_command)

    schedule = commands.add_parser("schedule", help="run a job file on its `schedule:` (cron, UTC)")
    schedule.add_argument("--config", required=True, help="job YAML file with a `schedule:` key")
    schedule.add_argument(
        "--max-runs", type=int, default=None, help="stop after N runs (default: run forever)"
    )
    schedule.add_argument(
        "--once", action="store_true", help="run once now and exit (for system cron or a Kubernetes CronJob)"
    )
    schedule.add_argument("--address", help="submit each run to this cluster (" + address_help + ")")
    schedule.add_argument("--ship-code", action="store_true", help="with --address: as for `submit`")
    schedule.set_defaults(handler=run_schedule_command)


def build_parser() -> argparse.ArgumentParser:
    from llava_batch.pipeline.families.tiny_models import FAMILIES, GEOMETRIES

    parser = argparse.ArgumentParser(
        prog="llava-batch", description="Batch inference for LLaVA-family models on Ray"
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LLAVA_BATCH_LOG_LEVEL", "INFO"),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        help="how much to log to stderr (default: LLAVA_BATCH_LOG_LEVEL, else INFO)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    from llava_batch.jobs import JOBS

    for name, job in JOBS.items():
        command = commands.add_parser(name, help=job.summary, description=job.summary)
        add_config_flags(command, job.config_class)
        command.set_defaults(handler=job_command(name))

    tiny = commands.add_parser(
        "make-tiny-model", help="build a tiny random-weight model offline (smoke tests)"
    )
    tiny.add_argument("--family", required=True, choices=FAMILIES, help="model family to build")
    tiny.add_argument("--out", required=True, help="directory to write the checkpoint to")
    tiny.add_argument(
        "--seed", type=int, default=0, help="seed of the random weights (same seed, same model; default: 0)"
    )
    tiny.add_argument(
        "--geometry",
        choices=GEOMETRIES,
        default="tiny",
        help="image geometry: tiny (32 px, 16 image tokens) or real (the public checkpoint's: 336/384 px, "
        "576-2,900 image tokens per image, with tiny weights; default: tiny)",
    )
    tiny.set_defaults(handler=run_make_tiny_model)
    add_cluster_commands(commands)
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
    # SIGTERM (kill, a Kubernetes pod stopping, a scheduler's timeout) stops a run as Ctrl-C does.
    previous_sigterm = signal.signal(signal.SIGTERM, raise_interrupted)
    try:
        return handler(args)
    except JobInterrupted as interrupted:  # committed shards stay; the lock was released on the way out
        print(interrupted.result.summary)
        return 128 + interrupted.signal_number
    except KeyboardInterrupt as interrupt:  # before any shard ran: nothing to summarise
        number = getattr(interrupt, "signal_number", signal.SIGINT)
        print(f"llava-batch: stopped by {signal.Signals(number).name}", file=sys.stderr)
        return 128 + number
    except ConfigError as error:
        return fail(error, EXIT_INVALID_SETTINGS)
    except yaml.YAMLError as error:
        # A YAML file read somewhere other than llava_batch.pipeline.config (which names the file) is still a settings error.
        return fail(f"config: not valid YAML ({error})", EXIT_INVALID_SETTINGS)
    except (FileNotFoundError, NotADirectoryError) as error:
        return fail(error, EXIT_INVALID_SETTINGS)
    except OutputLocked as error:
        return fail(error, EXIT_OUTPUT_LOCKED)
    except ClusterUnreachable as error:
        return fail(error, EXIT_CLUSTER_UNREACHABLE)
    except StoreError as error:  # credentials, bucket, endpoint: retrying cannot help
        return fail(error, EXIT_INVALID_SETTINGS)
    except TimeoutError as error:
        return fail(error, 1)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)


def fail(error: object, code: int) -> int:
    """One line on stderr, whatever the message holds (PyYAML and Ray write several)."""
    print(f"llava-batch: error: {' '.join(str(error).split())}", file=sys.stderr)
    return code


def raise_interrupted(signal_number: int, frame: Any) -> None:
    """SIGTERM handler: raise in the main thread like SIGINT, so that the run stops through its `finally`s."""
    raise Interrupted(signal_number)


if __name__ == "__main__":
    sys.exit(main())
