"""llm-do service: LLM workers as streaming HTTP endpoints."""
