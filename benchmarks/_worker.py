"""Run one sample of one workload in this (fresh) process and print its result as JSON.

    python -m benchmarks._worker WORKLOAD LIB SIZE TMPDIR

LIB is ``joblib``, ``arraycache`` or ``-`` (physical references). The last line of stdout
is ``BENCH-RESULT {...}``: the workload's dict, or ``{"error": "Type: message"}``.
"""

from __future__ import annotations

import importlib
import json
import sys
import traceback
from pathlib import Path

from .registry import workloads

MARKER = "BENCH-RESULT "


def main(argv: list[str]) -> int:
    name, lib_name, size, tmp = argv[0], argv[1], int(argv[2]), Path(argv[3])
    workload = workloads()[name]
    try:
        lib = None if lib_name == "-" else importlib.import_module(lib_name)
        if workload.fixed_size is not None:
            size = workload.fixed_size
        result = workload.run(lib, size, tmp)
        status = 0
    except Exception as exc:
        traceback.print_exc()
        first_line = (str(exc).strip().splitlines() or [""])[0]
        result = {"error": f"{type(exc).__name__}: {first_line}"[:200]}
        status = 1
    print(MARKER + json.dumps(result), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
