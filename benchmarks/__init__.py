"""Side-by-side benchmarks of arraycache against joblib: ``python -m benchmarks --help``.

One module per workload family (``reference``, ``storage``, ``hashing``, ``parallel``);
``_worker`` runs one sample in a fresh process, ``__main__`` runs them all and prints
the table. Results that matter are recorded in ``benchmarks/RESULTS.md``.
"""
