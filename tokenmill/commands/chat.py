"""`tokenmill chat`: interactive, streaming, multi-turn. /reset clears the history, /quit (or Ctrl-D) leaves."""

from __future__ import annotations

import argparse
import sys

from ..errors import TokenmillError
from .common import add_model_args, add_sampling_args, load_model_and_tokenizer, require_valid_text, sampling_kwargs

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


def read_line() -> str:
    try:
        line = input("you> ")
    except UnicodeDecodeError as error:  # a strict UTF-8 stdin
        raise TokenmillError(f"the line is not valid UTF-8 ({error.reason})") from None
    return require_valid_text(line, "the line")  # a surrogateescape stdin


def answer(model, tokenizer, history: list[dict], line: str, args) -> None:
    """One turn: the user's line and the streamed reply join the history; a turn that fails leaves it as it was."""
    history.append({"role": "user", "content": line})
    print("assistant> ", end="", flush=True)
    try:
        history.append({"role": "assistant", "content": reply(model, tokenizer, history, args)})
    except ValueError as error:  # e.g. the conversation outgrew the context
        history.pop()
        print(f"\ntokenmill: error: {error}; /reset starts a new conversation", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    from ..generation.utils import set_seed

    system = [{"role": "system", "content": require_valid_text(args.system, "the --system message")}] \
        if args.system else []
    model, tokenizer = load_model_and_tokenizer(args)
    if not tokenizer.chat_template:
        print("tokenmill: error: this model has no chat template; use `tokenmill generate`", file=sys.stderr)
        return 1
    if args.seed is not None:
        set_seed(args.seed)
    history = list(system)
    print(HELP, file=sys.stderr)
    while True:
        try:
            line = read_line()
        except EOFError:
            print()
            return 0
        except TokenmillError as error:  # one bad line does not end the conversation
            print(f"tokenmill: error: {error}; type it again", file=sys.stderr)
            continue
        text = line.strip()
        if text in ("/quit", "/exit"):
            return 0
        if text == "/reset":
            history = list(system)
            print("(conversation cleared)", file=sys.stderr)
        elif text:
            answer(model, tokenizer, history, line, args)
