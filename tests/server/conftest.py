"""A real uvicorn server on a loopback ephemeral port, serving the real SmolLM2 through tokenmill."""

import threading
import time
from dataclasses import dataclass

import pytest

from tokenmill.engine.engine import EngineConfig
from tokenmill.server.app import build_server_app
from tokenmill.server.runner import DrainingServer, make_server
from tokenmill.server.settings import ServerSettings

MODEL_NAME = "smollm2"


@dataclass
class Served:
    url: str
    app: object
    server: DrainingServer
    thread: threading.Thread

    @property
    def state(self):
        return self.app.state.tokenmill

    @property
    def engine(self):
        return self.state.engine.engine

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.state.engine.shutdown()


def start_server(model, tokenizer, lora_adapters=None, **settings) -> Served:
    app = build_server_app(model, tokenizer, EngineConfig(num_blocks=320, block_size=16, max_num_seqs=48),
                           ServerSettings(**{"model_name": MODEL_NAME, "default_max_tokens": 16, **settings}),
                           lora_adapters=lora_adapters)
    server = make_server(app, "127.0.0.1", 0, log_level="warning", drain_timeout=60)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    return Served(f"http://127.0.0.1:{server.port}", app, server, thread)


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    from tokenmill.auto import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf, progress=False)
    return model, AutoTokenizer.from_pretrained(smollm2_gguf)


@pytest.fixture(scope="session")
def server_factory():
    return start_server


@pytest.fixture(scope="session")
def served(smollm2):
    running = start_server(*smollm2, max_total_tokens=1024)
    yield running
    running.stop()


@pytest.fixture
def openai_client(served):
    import openai

    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture
def tgi_client(served):
    from huggingface_hub import InferenceClient

    return InferenceClient(base_url=served.url, timeout=120)


@pytest.fixture(scope="session")
def tiny_chat(smollm2_gguf, tmp_path_factory):
    """A tiny random Llama over SmolLM2's tokenizer and chat template: a real server's every path, at a cost
    per token small enough for hundreds of requests on two cores (its answers are arbitrary but deterministic)."""
    import torch
    import transformers

    from tokenmill.auto import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf)
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=2048, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None, pad_token_id=None, tie_word_embeddings=True, initializer_range=1.0)
    folder = tmp_path_factory.mktemp("tiny-chat")
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, progress=False), tokenizer
