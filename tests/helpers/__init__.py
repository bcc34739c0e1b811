"""Helpers of the test suite (imported as ``helpers.<module>``; conftest.py holds fixtures only)."""
