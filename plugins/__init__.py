"""The built-in backends. Each module is a plugin, declared under the ``xiaozhi_trio`` entry-point
group in ``pyproject.toml`` exactly as a third-party package would declare its own."""
