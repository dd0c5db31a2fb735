"""Agents behind OpenAI-compatible /v1/chat/completions (DeepSeek, GLM, Qwen, Ollama, ...)."""
