"""glibc malloc settings: reuse freed memory (embedding), return it (training). Each runs in a fresh process."""

from __future__ import annotations

import subprocess
import sys

PAGE_FAULTS = """
import resource, sys, torch
from hub_export.runtime.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "tuned" else None
x = torch.ones(8 * 2**20)  # 32 MiB; each step below allocates 32 MiB tensors, as a forward pass does
for step in range(6):
    if step == 3:  # steady state
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    y = torch.nn.functional.gelu(x * 2) + 1
    del y
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

FRAGMENTED_HEAP = """
import sys
from hub_export.runtime.memory import return_freed_memory
applied = return_freed_memory() if sys.argv[1] == "tuned" else None

def rss_mib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) // 1024

big = bytearray(4 * 2**20)  # a mapped block, freed: glibc raises its mmap threshold to 4 MiB
del big
before = rss_mib()
blocks = [bytearray(2**20) for _ in range(200)]  # 200 MiB in 1 MiB blocks, as a step's activations
del blocks[:-1]  # all freed but the last, which pins the heap's top
print(applied, rss_mib() - before)
"""


def run(script: str, mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True)
    applied, count = out.stdout.split()
    return applied, int(count)


def test_keep_freed_memory_stops_page_faults_on_reallocation() -> None:
    (applied, tuned), (_, default) = run(PAGE_FAULTS, "tuned"), run(PAGE_FAULTS, "default")
    assert applied == "True"
    assert default > 3 * 8192  # at least one 32 MiB tensor of fresh 4 KiB pages per step
    assert tuned < default / 4  # heap reuse; an aligned block may still need fresh pages now and then


def test_return_freed_memory_gives_back_what_a_fragmented_heap_keeps() -> None:
    (applied, tuned), (_, default) = run(FRAGMENTED_HEAP, "tuned"), run(FRAGMENTED_HEAP, "default")
    assert applied == "True"
    assert default >= 190  # glibc's default: the 199 freed MiB stay with the process
    assert tuned <= 10  # each block was its own mapping, returned when freed
