"""The CLI runs with the memory allocator exactly as a library user gets it: a process that went through
``nlseg.cli.main`` (a compute command) page-faults and gives memory back on a refilled 64 MiB tensor as a plain
``import nlseg`` process does. (The CLI once told glibc to keep freed memory for itself; issue 25.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None

# Fill a 64 MiB tensor 4 times; for each later fill: its page faults, the resident memory it added, and the
# resident memory given back when it was freed.
PROBE = """
import json, os, resource, torch

PAGE = os.sysconf("SC_PAGE_SIZE")

def resident():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE

def refills():
    torch.ones(16 * 2**20).sum()
    records = []
    for _ in range(3):
        faults, before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, resident()
        x = torch.ones(16 * 2**20)
        added = resident() - before
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
        del x
        records.append({"faults": faults, "added": added, "returned": before + added - resident()})
    return records
"""

PLAIN = PROBE + """
import nlseg
print(json.dumps(refills()))
"""

# The same refills run as the command of `nlseg predict ...`, after everything nlseg.cli.main does first.
THROUGH_CLI = PROBE + """
import nlseg.cli as cli

real = cli._module

class Probe:
    def __init__(self, module):
        self.add_parser = module.add_parser

    def run(self, args):
        print(json.dumps(refills()))
        return 0

cli._module = lambda name: Probe(real(name))
raise SystemExit(cli.main(["predict", "r.yaml", "--checkpoint", "c.pt", "--input", "in", "--output", "out"]))
"""


def _run(code: str) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc: blocks over 32 MiB are mapped afresh and unmapped on free")
def test_the_cli_process_allocates_as_a_plain_library_process():
    plain, cli = _run(PLAIN), _run(THROUGH_CLI)
    size = 64 * 2**20
    pages = size // os.sysconf("SC_PAGE_SIZE")
    print("plain:", plain, "\ncli:  ", cli)
    for records in (plain, cli):
        for record in records:
            # glibc's default: every refill is mapped afresh (each page faulted in again) and given back on free
            assert record["faults"] >= pages * 0.9
            assert record["added"] >= size * 0.9 and record["returned"] >= size * 0.9
    for mine, theirs in zip(cli, plain, strict=True):
        assert abs(mine["faults"] - theirs["faults"]) <= pages * 0.05
        assert abs(mine["returned"] - theirs["returned"]) <= size * 0.05
