"""Text processing for speech: sentence splitting, markdown and emoji cleanup."""
