"""/openapi.json says what the routes answer: each API's error codes and shape, SSE and plain-text bodies,
/health's empty body, Allow on 405, the bearer scheme only where the key is asked for."""

import httpx2
import pytest

from tokenmill.server.openapi_doc import OPENAI_ERROR, TGI_ERROR, corrected


def _operations(schema):
    return [(path, method, operation) for path, methods in schema["paths"].items()
            for method, operation in methods.items()]


def test_each_api_documents_its_own_error_codes_and_shape(served):
    schema = httpx2.get(f"{served.url}/openapi.json", timeout=30).json()
    for path, method, operation in _operations(schema):
        responses = operation["responses"]
        assert "422" not in responses or not path.startswith("/v1/"), (method, path)
        if path.startswith("/v1/"):
            assert responses["400"]["content"]["application/json"]["schema"] == OPENAI_ERROR
        else:
            assert responses["422"]["content"]["application/json"]["schema"] == TGI_ERROR
        assert "401" not in responses and "security" not in operation  # no key on this server
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_the_answers_match_the_document(served):
    schema = httpx2.get(f"{served.url}/openapi.json", timeout=30).json()
    health = httpx2.get(f"{served.url}/health", timeout=30)
    assert health.status_code == 200 and health.content == b""
    assert "content" not in schema["paths"]["/health"]["get"]["responses"]["200"]
    metrics = httpx2.get(f"{served.url}/metrics", timeout=30)
    assert metrics.headers["content-type"].startswith("text/plain")
    assert list(schema["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert list(schema["paths"]["/generate_stream"]["post"]["responses"]["200"]["content"]) == ["text/event-stream"]
    assert "text/event-stream" in schema["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]
    bad = httpx2.post(f"{served.url}/v1/completions", json={"prompt": 5}, timeout=30)
    assert bad.status_code == 400 and set(bad.json()) == {"error"}


@pytest.mark.parametrize("method, path, allowed", [("PUT", "/health", "GET"), ("GET", "/generate", "POST"),
                                                   ("DELETE", "/v1/chat/completions", "POST")])
def test_a_wrong_method_is_405_with_allow(served, method, path, allowed):
    response = httpx2.request(method, f"{served.url}{path}", timeout=30)
    assert response.status_code == 405 and response.headers["allow"] == allowed
    assert "error" in response.json()


@pytest.mark.parametrize("path, body", [("/detokenize", {"tokens": [True]}), ("/detokenize", {"tokens": [1.0]}),
                                        ("/generate", {"inputs": "hi", "parameters": {"max_new_tokens": "2"}}),
                                        ("/tokenize", {"inputs": "hi", "parameters": {"top_n_tokens": 99}})])
def test_values_of_another_type_than_documented_are_refused(served, path, body):
    assert httpx2.post(f"{served.url}{path}", json=body, timeout=30).status_code == 422


def test_with_a_key_the_guarded_operations_say_so():
    schema = {"paths": {"/health": {"get": {"responses": {}}}, "/generate": {"post": {"responses": {}}}}}
    document = corrected(schema, api_key_set=True)
    assert document["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert document["paths"]["/generate"]["post"]["security"] == [{"bearer": []}]
    assert "401" in document["paths"]["/generate"]["post"]["responses"]
    assert "security" not in document["paths"]["/health"]["get"] and "401" not in \
        document["paths"]["/health"]["get"]["responses"]
