"""Server limits and switches (the `tokenmill serve` flags)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class ServerSettings:
    model_name: str = "tokenmill"
    max_concurrent_requests: int = 128  # sequences generated at once (n choices of p prompts: p x n); beyond: 429
    max_sequences_per_request: int = 32  # prompts x n (best_of) of one request, half the default batch; beyond: 422
    engine_stall_seconds: float = 120.0  # one engine step longer than this: /health 503, no new admissions
    max_input_tokens: int | None = None  # None: the engine's limit
    max_total_tokens: int | None = None  # prompt + new tokens; None: the engine's limit
    max_request_bytes: int = 1 << 20
    request_body_seconds: float = 60.0  # a body still arriving after this: 408 (a trickle holds no connection)
    header_timeout_seconds: float = 10.0  # request headers not complete after this: the connection is closed
    write_timeout_seconds: float = 60.0  # a response unread by its client this long at a stretch: closed
    max_connections: int = 1000  # open client connections; one more is closed at once (a flood cannot take the fds)
    default_max_tokens: int = 256
    api_key: str | None = None  # Bearer token required on every route but the open ones (guards.py) when set
    cors_origins: list[str] | None = None
    allow_runtime_lora: bool = False  # POST /v1/load_lora_adapter and /v1/unload_lora_adapter enabled
    tool_call_parser: str | None = None  # hermes | llama3_json | mistral; None: from the chat template
    reasoning_parser: str | None = None  # qwen3 | deepseek_r1 | none; None: from the chat template
    stored_responses: int = 1000  # /v1/responses kept for previous_response_id (oldest dropped first)

    def __post_init__(self):
        """An unknown parser name or a time limit of 0 or less fails at start-up, not on the first request."""
        from .reasoning import check_reasoning_parser
        from .tool_calls import tool_call_format

        for name in ("engine_stall_seconds", "request_body_seconds", "header_timeout_seconds",
                     "write_timeout_seconds"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name} must be a finite number of seconds more than 0, got {getattr(self, name)!r}")
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int) \
                or self.max_connections < 1:
            raise ValueError(f"max_connections must be a whole number of at least 1, got {self.max_connections!r}")
        if self.tool_call_parser is not None:
            tool_call_format(self.tool_call_parser)
        if self.reasoning_parser is not None:
            check_reasoning_parser(self.reasoning_parser)
