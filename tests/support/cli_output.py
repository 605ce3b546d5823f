"""What the CLI itself printed, told apart from the worker lines Ray forwards to the same stderr."""

from __future__ import annotations

import re

RAY_WORKER_LINE = re.compile(r"^(\x1b\[[0-9;]*m)?\(.*\bpid=\d+")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    # Ray forwards its workers' output (`(MapWorker(...) pid=...) ...`) to this process's stderr whenever it
    # arrives, also from an earlier test's actors: those lines are not the CLI's. Ray prefixes each
    # newline-ended line; a progress bar's carriage returns stay inside it, so split on newlines only
    # (str.splitlines would cut `\rLoading weights ...` off its prefix).
    lines = [line for line in err.split("\n") if line and not RAY_WORKER_LINE.match(line)]
    assert len(lines) == 1, err
    return lines[0]
