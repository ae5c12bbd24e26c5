"""Test support: real servers and fault helpers shared by the tests."""
