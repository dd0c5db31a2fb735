"""Shared test material for the speech backends: one contract suite per backend kind (every
backend of a kind must pass it), real speech to test with, and a word error rate."""
