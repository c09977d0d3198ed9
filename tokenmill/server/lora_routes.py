"""LoRA adapters at run time, as vLLM serves them: POST /v1/load_lora_adapter {"lora_name", "lora_path"} and
/v1/unload_lora_adapter {"lora_name"} (enabled by `tokenmill serve --allow-runtime-lora`), and the adapters'
entries in /v1/models. Loading runs on the engine thread between steps; the model name selects the adapter."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from ..engine.adapters import AdapterInUseError, UnknownAdapterError
from ..loading.peft import AdapterError
from .errors import APIError
from .state import ServerState

router = APIRouter()


class LoadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(..., min_length=1)
    lora_path: str = Field(..., min_length=1)


class UnloadLoraRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(..., min_length=1)
    lora_int_id: int | None = None  # vLLM's clients may send it; names identify adapters here


def adapter_models(state: ServerState) -> list[dict]:
    """/v1/models entries of the loaded adapters (vLLM's shape: `root` the folder, `parent` the base model)."""
    return [{"id": name, "object": "model", "created": 0, "owned_by": "tokenmill", "root": source,
             "parent": state.settings.model_name, "max_model_len": state.max_total_tokens}
            for name, source in state.adapter_sources.items()]


def _state(request: Request) -> ServerState:
    state = request.app.state.tokenmill
    if not state.settings.allow_runtime_lora:
        raise APIError(403, "loading and unloading LoRA adapters at run time is disabled; start the server with "
                            "--allow-runtime-lora")
    return state


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(body: LoadLoraRequest, request: Request):
    state = _state(request)
    name = body.lora_name
    if name == state.settings.model_name or name in state.adapter_sources:
        raise APIError(400, f"the name {name!r} is already served; unload it first or choose another lora_name",
                       param="lora_name")
    state.adapter_sources[name] = body.lora_path  # claimed now: a concurrent load of the same name is refused
    try:
        await state.engine.call(lambda engine: engine.load_adapter(name, body.lora_path))
    except (AdapterError, KeyError, ValueError) as error:
        del state.adapter_sources[name]
        raise APIError(400, f"cannot load the LoRA adapter {name!r}: {_message(error)}", param="lora_path") from None
    except BaseException:
        state.adapter_sources.pop(name, None)
        raise
    return PlainTextResponse(f"Success: LoRA adapter '{name}' added successfully.")


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadLoraRequest, request: Request):
    state = _state(request)
    name = body.lora_name
    if name not in state.adapter_sources:
        raise APIError(404, f"the LoRA adapter {name!r} cannot be found", param="lora_name")
    try:
        await state.engine.call(lambda engine: engine.unload_adapter(name))
    except AdapterInUseError as error:
        raise APIError(409, str(error), param="lora_name") from None
    except UnknownAdapterError as error:
        raise APIError(404, str(error), param="lora_name") from None
    state.adapter_sources.pop(name, None)
    return PlainTextResponse(f"Success: LoRA adapter '{name}' removed successfully.")


def _message(error: BaseException) -> str:
    return error.args[0] if isinstance(error, KeyError) and error.args else str(error)
