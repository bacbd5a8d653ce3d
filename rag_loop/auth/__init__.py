"""API keys with scopes (keys) and signed per-answer feedback tokens (tokens)."""
