"""`pipeline("text-generation", model=..., tokenizer=...)`: transformers' text-generation pipeline over tokenmill's
`model.generate`, with the same call shapes (a string, a list of strings, chat messages, a list of chats) and the
same outputs (`[{"generated_text": ...}]`, a list of such lists for a list of inputs)."""

from __future__ import annotations

import copy

import torch

SUPPORTED_TASKS = ("text-generation",)
# transformers' text-generation defaults, used where neither the call nor the model's generation config sets them
PIPELINE_DEFAULTS = {"max_new_tokens": 256, "do_sample": True, "temperature": 0.7}
# dropped from the defaults when not sampling (generate would warn that they are unused)
SAMPLING_KEYS = {"temperature", "top_k", "top_p", "min_p", "top_h", "typical_p", "epsilon_cutoff", "eta_cutoff"}
PREPROCESS_KEYS = ("prefix", "add_special_tokens", "truncation", "tools", "documents", "tokenizer_encode_kwargs",
                   "continue_final_message")
POSTPROCESS_KEYS = ("return_full_text", "return_tensors", "return_text", "clean_up_tokenization_spaces",
                    "skip_special_tokens")


def pipeline(task: str | None = None, model=None, tokenizer=None, device=None, dtype=None, *, torch_dtype=None,
             device_map=None, gguf_file: str | None = None, batch_size: int | None = None,
             model_kwargs: dict | None = None, **kwargs) -> TextGenerationPipeline:
    """A text-generation pipeline. `model`: a folder, a .gguf file, a Hub id or a loaded tokenmill model;
    `tokenizer`: the same kinds (default: the model's own); the other keywords become every call's defaults."""
    task = task or "text-generation"
    if task not in SUPPORTED_TASKS:
        raise ValueError(f"tokenmill's pipeline() supports only the {', '.join(map(repr, SUPPORTED_TASKS))} task, "
                         f"not {task!r}")
    if model is None:
        raise ValueError("pipeline() needs model=: a folder, a .gguf file, a Hub id or a loaded model")
    if dtype is not None and torch_dtype is not None:
        raise ValueError("pass dtype or torch_dtype (its old name), not both")
    device = _device_name(device if device is not None else _device_from_map(device_map))
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from .auto import AutoModelForCausalLM

        source = str(model)
        model = AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=dtype or torch_dtype,
                                                     device=device, **(model_kwargs or {}))
    else:
        source = getattr(model, "name_or_path", None)
        if device is not None:
            model = model.to(device)
    if tokenizer is None or isinstance(tokenizer, str) or hasattr(tokenizer, "__fspath__"):
        tokenizer = _load_tokenizer(tokenizer if tokenizer is not None else source, gguf_file)
    return TextGenerationPipeline(model, tokenizer, batch_size=batch_size, **kwargs)


def _load_tokenizer(source, gguf_file: str | None):
    from .auto import AutoTokenizer

    if not source:
        raise ValueError("pass tokenizer=: this model does not say where it was loaded from")
    return AutoTokenizer.from_pretrained(str(source), gguf_file=gguf_file)


def _device_from_map(device_map):
    if device_map is None or isinstance(device_map, (str, int, torch.device)):
        return device_map
    raise ValueError("tokenmill runs a model on one device: device_map takes a device name or 'auto', not a map")


def _device_name(device) -> str | None:
    """transformers' device spellings (-1 the CPU, n ≥ 0 the n-th GPU, a torch.device, a name) → a name."""
    if device is None or isinstance(device, str):
        return device
    if isinstance(device, torch.device):
        return str(device)
    if isinstance(device, int):
        return "cpu" if device < 0 else f"cuda:{device}"
    raise TypeError(f"device must be a name, an index or a torch.device, got {type(device).__name__}")


def _is_message(value) -> bool:
    return isinstance(value, dict) and "role" in value and "content" in value


class Chat:
    """One conversation given as input, kept apart from a batch of strings."""

    def __init__(self, messages):
        if not all(_is_message(message) for message in messages):
            raise ValueError("when passing chat messages, each must be a dict with a 'role' and a 'content' key")
        self.messages = list(messages)


def _inputs(text_inputs) -> tuple[list, bool]:
    """(items, whether one input was given): a string, a chat, or a list (any iterable) of either."""
    if isinstance(text_inputs, (str, Chat)):
        return [text_inputs], True
    if isinstance(text_inputs, dict):
        raise TypeError("a chat is a list of message dicts, not one dict")
    items = list(text_inputs)
    if not items:
        raise ValueError("no inputs: pass a string, a list of strings, chat messages or a list of chats")
    if isinstance(items[0], dict):  # a conversation; Chat says which message is malformed
        return [Chat(items)], True
    if isinstance(items[0], (list, tuple)) and all(chat and _is_message(chat[0]) for chat in items):
        return [Chat(chat) for chat in items], False
    if not all(isinstance(item, str) for item in items):
        kinds = sorted({type(item).__name__ for item in items})
        raise TypeError(f"inputs are strings, chat messages or lists of chat messages, got {', '.join(kinds)}")
    return items, False


def _return_type(return_full_text=None, return_tensors=None, return_text=None) -> str:
    if return_full_text is not None:
        if return_text is not None:
            raise ValueError("`return_text` is mutually exclusive with `return_full_text`")
        if return_tensors is not None:
            raise ValueError("`return_full_text` is mutually exclusive with `return_tensors`")
        return "full_text" if return_full_text else "new_text"
    if return_tensors is not None:
        if return_text is not None:
            raise ValueError("`return_text` is mutually exclusive with `return_tensors`")
        return "tensors" if return_tensors else "full_text"
    return "full_text"


class TextGenerationPipeline:
    """Call it with a string, a list of strings, chat messages or a list of chats; keywords are generate()'s
    (max_new_tokens, do_sample, temperature, num_return_sequences, ...) and the pipeline's own
    (return_full_text, return_tensors, prefix, stop_sequence, continue_final_message, batch_size, ...)."""

    task = "text-generation"

    def __init__(self, model, tokenizer, batch_size: int | None = None, **kwargs):
        if "handle_long_generation" in kwargs:
            raise ValueError("handle_long_generation is not supported: shorten the prompt or raise max_length")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = batch_size
        self._call_defaults = kwargs

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __call__(self, text_inputs, batch_size: int | None = None, **kwargs):
        items, single = _inputs(text_inputs)
        options = {**self._call_defaults, **kwargs}
        if options.pop("handle_long_generation", None) is not None:
            raise ValueError("handle_long_generation is not supported: shorten the prompt or raise max_length")
        preprocess = {key: options.pop(key) for key in PREPROCESS_KEYS if key in options}
        postprocess = {key: options.pop(key) for key in POSTPROCESS_KEYS if key in options}
        return_type = _return_type(*(postprocess.pop(key, None)
                                     for key in ("return_full_text", "return_tensors", "return_text")))
        generate_kwargs = self._generate_kwargs(options)
        size = batch_size or self.batch_size or 1
        if size < 1:
            raise ValueError(f"batch_size must be at least 1, got {size}")
        if size > 1 and len(items) > 1 and self.tokenizer.pad_token_id is None:
            raise ValueError("batching needs a pad token and this tokenizer has none: set "
                             "`pipe.tokenizer.pad_token_id = pipe.model.config.eos_token_id` or use batch_size=1")
        records = []
        for start in range(0, len(items), size):
            chunk = items[start:start + size]
            prompts = [self._encode(item, **preprocess) for item in chunk]
            for item, (rows, prompt_length) in zip(chunk, self._generate(prompts, generate_kwargs)):
                records.append([self._record(item, row, prompt_length, return_type,
                                             preprocess.get("continue_final_message"), **postprocess)
                                for row in rows])
        return records[0] if single else records

    def _generate_kwargs(self, options: dict) -> dict:
        """The call's generation keywords plus the pipeline's defaults for what neither they nor the model's
        generation config set (the sampling defaults only when sampling), as transformers' pipeline does."""
        stop_sequence = options.pop("stop_sequence", None)
        if stop_sequence is not None:
            options["stop_strings"] = [stop_sequence] if isinstance(stop_sequence, str) else list(stop_sequence)
        if "stop_strings" in options:
            options["tokenizer"] = self.tokenizer
        user_config = options.get("generation_config")
        already_set = dict(self.model.generation_config.to_diff_dict())
        if user_config is not None:
            already_set.update(user_config.to_diff_dict())
        already_set.update(options)
        defaults = dict(PIPELINE_DEFAULTS)
        if self.tokenizer.pad_token_id is not None:
            defaults["pad_token_id"] = self.tokenizer.pad_token_id
        added = {key: value for key, value in defaults.items()
                 if key not in already_set and not (key == "max_new_tokens" and "max_length" in already_set)}
        if not {**already_set, **added}.get("do_sample"):
            added = {key: value for key, value in added.items() if key not in SAMPLING_KEYS}
        if user_config is None:
            return {**options, **added}
        user_config = copy.deepcopy(user_config)  # the caller's config stays as it was
        user_config.update(**added)
        return {**options, "generation_config": user_config}

    def _encode(self, item, prefix: str = "", add_special_tokens: bool | None = None, truncation=None,
                tools=None, documents=None, tokenizer_encode_kwargs: dict | None = None,
                continue_final_message: bool | None = None) -> list[int]:
        options = {"truncation": truncation} if truncation is not None else {}
        options.update(tokenizer_encode_kwargs or {})
        if isinstance(item, Chat):
            if continue_final_message is None:  # a chat ending in an assistant message is a prefill to continue
                continue_final_message = item.messages[-1]["role"] == "assistant"
            encoded = self.tokenizer.apply_chat_template(
                item.messages, add_generation_prompt=not continue_final_message,
                continue_final_message=continue_final_message, tools=tools, documents=documents, return_dict=True,
                **options)
        else:
            if add_special_tokens is not None:
                options["add_special_tokens"] = add_special_tokens
            encoded = self.tokenizer(prefix + item, **options)
        ids = list(encoded["input_ids"])
        if not ids:
            raise ValueError("an empty prompt has no token to start from: give at least one character")
        return ids

    def _generate(self, prompts: list[list[int]], generate_kwargs: dict):
        """Left-padded rows through model.generate → per prompt (its sequences, the padded prompt length)."""
        width = max(len(ids) for ids in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in prompts], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in prompts],
                                      device=self.device)
        with torch.no_grad():
            output = self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        sequences = getattr(output, "sequences", output).cpu()
        per_prompt = sequences.shape[0] // len(prompts)
        rows = sequences.reshape(len(prompts), per_prompt, -1).tolist()
        return [(prompt_rows, width) for prompt_rows in rows]

    def _record(self, item, sequence: list[int], prompt_length: int, return_type: str,
                continue_final_message: bool | None, clean_up_tokenization_spaces: bool | None = None,
                skip_special_tokens: bool | None = None) -> dict:
        if return_type == "tensors":
            return {"generated_token_ids": sequence}
        text = self.tokenizer.decode(sequence[prompt_length:],
                                     skip_special_tokens=True if skip_special_tokens is None else skip_special_tokens,
                                     clean_up_tokenization_spaces=clean_up_tokenization_spaces)
        if return_type == "new_text":
            return {"generated_text": text}
        if isinstance(item, str):
            return {"generated_text": item + text}
        messages = item.messages
        if continue_final_message is None:
            continue_final_message = messages[-1]["role"] == "assistant"
        if continue_final_message:  # the prefill grows by the new text
            last = messages[-1]
            return {"generated_text": messages[:-1] + [{"role": last["role"], "content": last["content"] + text}]}
        return {"generated_text": messages + [{"role": "assistant", "content": text}]}
