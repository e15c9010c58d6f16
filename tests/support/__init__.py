"""Test support code shared by tests and benchmarks (not tests themselves)."""
