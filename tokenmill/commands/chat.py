"""`tokenmill chat`: interactive, streaming, multi-turn. /reset clears the history, /quit (or Ctrl-D) leaves."""

from __future__ import annotations

import argparse
import sys

from .common import add_model_args, add_sampling_args, load_model_and_tokenizer, sampling_kwargs

HELP = "commands: /reset clears the conversation, /quit or Ctrl-D leaves"


def add_args(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    add_sampling_args(parser)
    parser.add_argument("--system", default=None, help="system message for the conversation")


def reply(model, tokenizer, history: list[dict], args) -> str:
    from ..generation.streamers import TextStreamer

    inputs = tokenizer.apply_chat_template(history, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    output = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            streamer=streamer, tokenizer=tokenizer, **sampling_kwargs(args))
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def main(args: argparse.Namespace) -> int:
    from ..generation.utils import set_seed

    model, tokenizer = load_model_and_tokenizer(args)
    if not tokenizer.chat_template:
        print("tokenmill: error: this model has no chat template; use `tokenmill generate`", file=sys.stderr)
        return 1
    if args.seed is not None:
        set_seed(args.seed)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    print(HELP, file=sys.stderr)
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        text = line.strip()
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            history = list(system)
            print("(conversation cleared)", file=sys.stderr)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": line})
        print("assistant> ", end="", flush=True)
        history.append({"role": "assistant", "content": reply(model, tokenizer, history, args)})
