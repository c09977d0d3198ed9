"""Running an LLMEngine to the end in tests: its finished outputs by request id."""


def run_to_completion(engine, requests: dict | None = None) -> dict:
    """Add `requests` ({id: (prompt ids, SamplingParams)}), step until nothing is unfinished, and return each
    finished RequestOutput by request id."""
    for request_id, (prompt, params) in (requests or {}).items():
        engine.add_request(request_id, prompt, params)
    finished = {}
    while engine.has_unfinished_requests():
        for output in engine.step():
            if output.finished:
                finished[output.request_id] = output
    return finished
