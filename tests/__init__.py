"""The test suite (python -m pytest -q); shared fixtures in conftest.py."""
