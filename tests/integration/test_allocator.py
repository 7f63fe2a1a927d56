"""stemd.allocator against the real glibc, each case in a fresh Python process
(mallopt's arena limit only holds for threads started after it).

What a user would notice: a model's passes stop faulting in fresh memory (the
speed-up itself is measured by `make bench`, not here), and an idle daemon hands
that memory back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any

import pytest

PASS_MIB = (64, 128, 64)  # blocks as big as a full-size HTDemucs's activations
PASS_BYTES = sum(PASS_MIB) << 20
# glibc needs a number of passes to lay its heap out for torch's 64-byte aligned
# blocks: for this pattern it took 4, 5, 10 or 17 passes (four layouts, in 30
# runs of 40 passes), and no page was faulted in after that. The faults are
# counted over the last COUNTED of PASS_COUNT passes. (The real model settles
# within its warm-up.)
PASS_COUNT = 24
COUNTED = 4

# A worker thread allocating, filling and freeing the same blocks pass after
# pass, as the model does.
PASSES = """
from stemd.allocator import release_free_memory, tune_for_model
tuned = tune_for_model() if TUNE else None  # first, as `stemd run` does: importing
import json, resource, threading, torch  # torch starts a thread, with its own arena

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

faults = []

def passes():
    for i in range(PASS_COUNT):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [torch.empty(mib << 18).fill_(1.0) for mib in PASS_MIB]
        del blocks
        if i >= PASS_COUNT - COUNTED:
            faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

worker = threading.Thread(target=passes)
worker.start()
worker.join()
kept = rss_kib()
released = release_free_memory()
print(json.dumps({"tuned": tuned, "faults": sum(faults), "kept_kib": kept,
                  "released": released, "after_release_kib": rss_kib()}))
"""


def passes(tune: bool, env: dict[str, str] | None = None) -> dict[str, Any]:
    script = (
        f"TUNE = {tune}\nPASS_MIB = {PASS_MIB}\nPASS_COUNT = {PASS_COUNT}\nCOUNTED = {COUNTED}\n"
        + textwrap.dedent(PASSES)
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_tuned_passes_reuse_their_memory_and_idle_hands_it_back() -> None:
    pages = COUNTED * PASS_BYTES // os.sysconf("SC_PAGE_SIZE")  # the counted passes' worth
    default = passes(tune=False)
    tuned = passes(tune=True)
    assert tuned["tuned"], "glibc did not take the settings"
    # glibc's defaults: each pass maps its block afresh and faults in every page
    assert default["faults"] > 0.9 * pages
    # tuned: the blocks come back from the heap, once it has settled (the real
    # model's passes fault in under 3 % of their memory)
    assert tuned["faults"] < 0.2 * pages, tuned
    # the freed block stayed resident until the idle release handed it back
    assert tuned["released"] is True
    assert tuned["kept_kib"] - tuned["after_release_kib"] > 0.9 * PASS_BYTES / 1024, tuned


@pytest.mark.parametrize(
    "setting", [{"MALLOC_ARENA_MAX": "4"}, {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0"}]
)
def test_glibc_settings_of_the_users_own_are_left_alone(setting: dict[str, str]) -> None:
    assert passes(tune=True, env=setting)["tuned"] is None
