"""SIGKILL during checkpoint writes: ``python write_checkpoints.py DIR KILLS SEED``.

For each of ``KILLS`` rounds, a forked child writes a ~5 MB checkpoint to ``DIR/last.ckpt`` over and
over with ``atomic_write`` (each version holds its own number in every tensor, so a mixed or
half-written file cannot pass for a good one); the parent kills it with SIGKILL after a random
delay, then loads ``last.ckpt`` with ``weights_only=True``. Prints one JSON line per round:
``{"version": <the version found>, "whole": <every tensor of that version>, "temporaries": [...]}``
(``temporaries``: hidden files left in DIR before any clean-up). With ``SEGTRAIN_TEST_NO_O_TMPFILE``
set, it writes as on a filesystem without ``O_TMPFILE`` (a named temporary file).
"""

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch

from segtrain.files import atomic_write

if os.environ.get("SEGTRAIN_TEST_NO_O_TMPFILE"):
    del os.O_TMPFILE

directory, kills, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
version = 0
for _ in range(kills):
    pid = os.fork()
    if pid == 0:  # the writer
        while True:
            version += 1
            checkpoint = {"version": version, "state_dict": {f"w{i}": torch.full((256, 1024), float(version)) for i in range(5)}}
            atomic_write(directory / "last.ckpt", lambda handle: torch.save(checkpoint, handle))
    time.sleep(rng.uniform(0.02, 0.3))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    temporaries = sorted(p.name for p in directory.iterdir() if p.name.startswith("."))
    found = torch.load(directory / "last.ckpt", weights_only=True)
    version = found["version"]  # the next writer continues the numbering
    whole = all(bool((w == version).all()) for w in found["state_dict"].values())
    print(json.dumps({"version": version, "whole": whole, "temporaries": temporaries}), flush=True)
