"""Running joblib's own test modules against arraycache (see tests/test_joblib_suite.py)."""
