"""Pipeline stages: each a trio task between memory channels, around a sans-IO core."""
