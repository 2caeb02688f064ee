"""Peak resident memory of ingesting the fuzz corpus against the steady state (run as a script).

Usage: ``python fuzz_rss_probe.py RECORDS.pickle N_STEADY``; the file holds pickled Records one
after another: first N_STEADY ordinary images, then the corpus. Prints JSON with MiB figures.

The measure: VmHWM in /proc/self/status is the kernel's high-water mark of this process's resident
memory and cannot be reset, so it is read in a fresh process that never holds the corpus (records
are unpickled one at a time from the file, so only one case is in memory). Steady state = VmHWM
after the ingest path is imported and has decoded the N_STEADY ordinary images (imports, caches and
allocator pools warm); peak = VmHWM after the whole corpus went through the same path. Their ratio
is what one hostile record can add on top of a running ingest.
"""
from __future__ import annotations

import json
import pickle
import sys

from streamd.bench.fuzz_inputs import ingest_outcomes


def vm_hwm_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def main(path: str, n_steady: int) -> None:
    with open(path, "rb") as f:
        for _ in range(n_steady):
            assert ingest_outcomes(pickle.load(f)) == ["decodes"]
        steady = vm_hwm_mib()
        n = 0
        while True:
            try:
                record = pickle.load(f)
            except EOFError:
                break
            ingest_outcomes(record)
            n += 1
    peak = vm_hwm_mib()
    print(json.dumps({"steady_mib": round(steady, 1), "peak_mib": round(peak, 1), "ratio": round(peak / steady, 3),
                      "corpus_records": n}))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
