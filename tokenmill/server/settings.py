"""Server limits and switches (the `tokenmill serve` flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ServerSettings:
    model_name: str = "tokenmill"
    max_concurrent_requests: int = 128  # beyond: 429
    max_input_tokens: int | None = None  # None: the engine's limit
    max_total_tokens: int | None = None  # prompt + new tokens; None: the engine's limit
    max_request_bytes: int = 1 << 20
    default_max_tokens: int = 256
    api_key: str | None = None  # Bearer token required on generation routes when set
    cors_origins: list[str] | None = None
    allow_runtime_lora: bool = False  # POST /v1/load_lora_adapter and /v1/unload_lora_adapter enabled
