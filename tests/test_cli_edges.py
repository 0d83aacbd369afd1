"""The command line at its edges: a reader that closes the pipe, non-finite numbers, ``~`` and ``$HOME`` in
paths, files refused by safe loading."""
from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("what", ["models", "recipes"])
def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(what):
    # `nlseg list models | head`: the reader is gone before nlseg writes (deterministic, unlike a real head)
    proc = subprocess.Popen([sys.executable, "-m", "nlseg", "list", what], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 141  # as a Unix tool killed by SIGPIPE
    assert err == ""
