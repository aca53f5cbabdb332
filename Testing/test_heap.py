"""Freed memory kept in the heap during inference (VesselSegLib/inference/heap.py): real allocations, counted
by the kernel's page-fault counter, in a fresh process so that nothing else has shaped its heap."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from VesselSegLib.inference import heap

REPO = Path(__file__).resolve().parents[1]

CHURN = """
import json, resource, torch
from VesselSegLib.inference.heap import keep_freed_memory

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def churn():  # what each sliding window does: allocate large activations, touch them, free them
    for _ in range(4):
        block = torch.empty(16 * 2**20).fill_(1.0)  # 64 MiB
        del block

def faults_of_churn():
    for _ in range(3):  # glibc settles into reusing the freed blocks after a few cycles
        churn()
    before = faults()
    churn()
    return faults() - before

def resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()

outside = faults_of_churn()
with keep_freed_memory() as active:
    inside = faults_of_churn()
    kept = resident_bytes()  # the freed blocks are still resident, ready for the next window
released = resident_bytes()  # on leaving they go back to the kernel
print(json.dumps({"active": active, "outside": outside, "inside": inside, "kept": kept, "released": released}))
"""


def _churn(**environment) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", CHURN],
        env={**os.environ, **environment},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not heap.supported(), reason="glibc's allocator only (Linux)")
def test_freed_activations_are_reused_without_page_faults_and_the_defaults_come_back():
    counts = _churn()
    pages_per_churn = 4 * 64 * 2**20 // os.sysconf("SC_PAGE_SIZE")
    assert counts["active"] is True
    assert counts["outside"] > pages_per_churn // 2  # glibc maps and unmaps each 64 MiB block afresh
    assert counts["inside"] < counts["outside"] / 20  # reused from the heap: (almost) no fault
    assert counts["kept"] - counts["released"] > 32 * 2**20  # a long-lived process (Slicer) gets them back


def test_the_switch_turns_it_off():
    counts = _churn(VESSELSEG_KEEP_FREED_MEMORY="0")
    assert counts["active"] is False
    if heap.supported():
        assert counts["inside"] > counts["outside"] / 2  # nothing changed inside
