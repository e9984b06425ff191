"""Cache a feature-extraction step on a 400 MB array; the hit comes back as a memmap.

Run:  python examples/quickstart.py
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

import arraycache


def main() -> None:
    signals = np.random.default_rng(0).standard_normal((2_000, 25_000), dtype=np.float64)
    print(f"input: {signals.shape} float64, {signals.nbytes / 1e6:.0f} MB")

    with tempfile.TemporaryDirectory(prefix="arraycache-quickstart-") as location:
        memory = arraycache.Memory(location, mmap_mode="r", verbose=0)

        @memory.cache
        def extract_features(x: np.ndarray, window: int = 8) -> np.ndarray:
            """A stand-in for a slow feature extractor: moving averages and powers."""
            kernel = np.ones(window) / window
            smooth = np.apply_along_axis(np.convolve, 1, x[:, :5_000], kernel, mode="same")
            return np.hstack([smooth, x[:, 5_000:] ** 2])

        t0 = time.perf_counter()
        first = extract_features(signals)
        t1 = time.perf_counter()
        second = extract_features(signals)
        t2 = time.perf_counter()

        assert np.array_equal(first, second)
        print(f"first call (computes and stores): {t1 - t0:8.3f} s")
        print(f"second call (cache hit):          {(t2 - t1) * 1e3:8.1f} ms "
              f"-> {type(second).__name__} of {second.nbytes / 1e6:.0f} MB")
        del first, second  # release the memory maps before the folder goes


if __name__ == "__main__":
    main()
