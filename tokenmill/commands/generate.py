"""`tokenmill generate "prompt"`: one completion, optionally through the chat template, optionally streamed."""

from __future__ import annotations

import argparse
import sys

from ..errors import TokenmillError
from .common import add_load_args, add_model_arg, add_sampling_args, load_model_and_tokenizer, require_valid_text, sampling_kwargs
from .parallel import add_parallel_args


EXAMPLE = """examples:
  tokenmill generate "The capital of France is" --max-new-tokens 20
  tokenmill generate model.gguf "Name three colours." --chat --stream --temperature 0.7"""


def add_args(parser: argparse.ArgumentParser) -> None:
    add_model_arg(parser)  # MODEL before PROMPT: one positional is the prompt, two are MODEL PROMPT
    parser.add_argument("prompt", help="the prompt text ('-' reads it from standard input)")
    add_load_args(parser)
    add_parallel_args(parser)
    add_sampling_args(parser)
    parser.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    parser.add_argument("--system", default=None, help="system message (needs --chat; refused without it)")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are generated")


def build_inputs(tokenizer, prompt: str, chat: bool, system: str | None):
    if not chat:
        return tokenizer(prompt, return_tensors="pt")
    if not tokenizer.chat_template:
        raise SystemExit("tokenmill: error: this model has no chat template; drop --chat")
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                         return_dict=True)


def read_stdin_text() -> str:
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as error:
        raise TokenmillError(f"the prompt on standard input is not valid UTF-8 ({error})") from None


def main(args: argparse.Namespace) -> int:
    from ..generation.streamers import TextStreamer
    from ..generation.utils import set_seed

    prompt = read_stdin_text() if args.prompt == "-" else require_valid_text(args.prompt, "the prompt")
    if args.system is not None:
        if not args.chat:
            raise TokenmillError("--system needs --chat (a system message only exists in a chat template)")
        require_valid_text(args.system, "the --system message")
    model, tokenizer = load_model_and_tokenizer(args)
    if args.seed is not None:
        set_seed(args.seed)
    inputs = build_inputs(tokenizer, prompt, args.chat, args.system)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if args.stream else None
    output = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            streamer=streamer, tokenizer=tokenizer, **sampling_kwargs(args))
    if streamer is None:
        new_ids = output[0, inputs["input_ids"].shape[1]:]
        print(tokenizer.decode(new_ids, skip_special_tokens=True))
    return 0
