"""The Coze (扣子) agent over the streaming chat API v3."""
