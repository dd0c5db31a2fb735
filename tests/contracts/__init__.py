"""Shared contract suites: the same tests, parametrized over every backend of a kind."""
