"""Embedded storage (SQLite): conversations and devices."""
