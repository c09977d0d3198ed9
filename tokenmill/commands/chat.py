"""`tokenmill chat`: interactive, streaming, multi-turn. Slash commands in chat_commands.py, input in chat_input.py.

Ctrl-C while an answer is written stops it at the next token and returns to the prompt; the part already shown
stays in the conversation as the assistant's message (so the roles keep alternating). A second Ctrl-C stops it
at once. Ctrl-C at the prompt clears the line; Ctrl-D or /bye leaves.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import torch

from ..errors import TokenmillError
from .chat_commands import ChatSession, run_command
from .chat_input import MessageReader, history_path
from .chat_parallel import SharedStop, announce_end, announce_turn, follow_chat
from .common import add_model_args, add_sampling_args, load_model_and_tokenizer, require_valid_text, sampling_kwargs
from .parallel import add_parallel_args

EXAMPLE = """examples:
  tokenmill chat model.gguf --system "Answer briefly." --temperature 0.7
  then, at the prompt:  /set temperature 0.2   /system You are a poet.   /save chat.json   /bye"""

GREETING = "type a message; /help lists the commands, Ctrl-C stops an answer, Ctrl-D or /bye leaves"


def add_args(parser: argparse.ArgumentParser) -> None:
    add_model_args(parser)
    add_sampling_args(parser)
    parser.add_argument("--system", default=None, help="system message for the conversation")
    parser.add_argument("--verbose", action="store_true",
                        help="after each answer, a line with its token counts and tokens/s (or /set verbose)")
    add_parallel_args(parser)


class StopRequest:
    """A stopping criterion set by Ctrl-C (SIGINT) during an answer; a second Ctrl-C raises KeyboardInterrupt."""

    def __init__(self, escalate: bool = True):
        self.requested = False
        self.escalate = escalate  # False under tensor parallelism: every rank must stop at the same step


    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.requested, dtype=torch.bool, device=input_ids.device)

    def on_sigint(self, signum, frame) -> None:
        if self.requested and self.escalate:
            raise KeyboardInterrupt
        self.requested = True


class AnswerPrinter:
    """Prints the answer as it becomes final and keeps what was shown, with the times the verbose line needs."""

    def __init__(self, tokenizer):
        from ..generation.streamers import TextStreamer

        printer = self

        class _Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                printer.shown.append(text)
                print(text, flush=True, end="" if not stream_end else "\n")

            def put(self, value) -> None:
                if not self.next_tokens_are_prompt:
                    printer.token_times.append(time.perf_counter())
                super().put(value)

        self.streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.shown: list[str] = []
        self.token_times: list[float] = []
        self.started = time.perf_counter()

    def text(self) -> str:
        return "".join(self.shown)

    def stats(self, prompt_tokens: int) -> str:
        times = self.token_times
        if not times:
            return f"[prompt {prompt_tokens} tokens; no answer tokens]"
        prefill = times[0] - self.started
        decode = times[-1] - times[0]
        rate = f"{(len(times) - 1) / decode:.1f} tokens/s" if decode > 0 else "- tokens/s"
        return (f"[{len(times)} tokens, {rate}; prompt {prompt_tokens} tokens in {prefill:.2f} s "
                f"({prompt_tokens / prefill if prefill > 0 else 0:.0f} tokens/s)]")


def reply(model, tokenizer, messages: list[dict], args, printer: AnswerPrinter | None = None,
          stop: StopRequest | None = None) -> str:
    """The answer to `messages`, streamed to stdout; a stop request ends it early (the shown part returned)."""
    from ..generation.stopping_criteria import StoppingCriteriaList

    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    printer = printer or AnswerPrinter(tokenizer)
    kwargs, group = sampling_kwargs(args), getattr(args, "tensor_parallel", None)
    if group is not None:  # the other ranks run this generate() too
        announce_turn(group, messages, kwargs)
        criteria = StoppingCriteriaList([SharedStop(group, stop)])
    else:
        criteria = StoppingCriteriaList([stop] if stop is not None else [])
    try:
        output = model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                streamer=printer.streamer, tokenizer=tokenizer, stopping_criteria=criteria,
                                **kwargs)
    except KeyboardInterrupt:  # the second Ctrl-C: what was shown is the answer
        print()
        return printer.text()
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


def answer(model, tokenizer, session: ChatSession, line: str) -> None:
    """One turn: the user's line and the streamed reply join the history; a turn that fails leaves it as it was."""
    session.turns.append({"role": "user", "content": line})
    print("assistant> ", end="", flush=True)
    tensor_parallel = getattr(session.args, "tensor_parallel", None)
    printer, stop = AnswerPrinter(tokenizer), StopRequest(escalate=tensor_parallel is None)
    previous_handler = signal.signal(signal.SIGINT, stop.on_sigint)
    try:
        text = reply(model, tokenizer, session.messages(), session.args, printer, stop)
    except ValueError as error:  # e.g. the conversation outgrew the context
        session.turns.pop()
        print(f"\ntokenmill: error: {error}; /clear starts a new conversation", file=sys.stderr)
        return
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    session.turns.append({"role": "assistant", "content": text})
    if stop.requested:
        print("(stopped; the partial answer stays in the conversation)", file=sys.stderr)
    if session.verbose:
        prompt_tokens = len(tokenizer.apply_chat_template(session.messages()[:-1], add_generation_prompt=True))
        print(printer.stats(prompt_tokens), file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    system = require_valid_text(args.system, "the --system message") if args.system else None
    model, tokenizer = load_model_and_tokenizer(args)
    group = getattr(args, "tensor_parallel", None)
    if group is not None and group.rank != 0:
        return follow_chat(model, tokenizer, group)
    try:
        return _converse(model, tokenizer, args, system)
    finally:
        if group is not None:
            announce_end(group)


def _converse(model, tokenizer, args: argparse.Namespace, system: str | None) -> int:
    from ..generation.utils import set_seed

    if not tokenizer.chat_template:
        print("tokenmill: error: this model has no chat template; use `tokenmill generate`", file=sys.stderr)
        return 1
    if args.seed is not None:
        set_seed(args.seed)
    session = ChatSession(args, system=system, verbose=args.verbose)
    reader = MessageReader()
    print(GREETING + (f" (history in {history_path()})" if reader.readline else ""), file=sys.stderr)
    while not session.done:
        try:
            line = reader.read("you> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:  # at the prompt: a fresh line, as a shell does
            print("\n(use Ctrl-D or /bye to leave)", file=sys.stderr)
            continue
        except TokenmillError as error:  # one bad line does not end the conversation
            print(f"tokenmill: error: {error}; type it again", file=sys.stderr)
            continue
        text = line.strip()
        if text.startswith("/"):
            try:
                message = run_command(session, text)
            except TokenmillError as error:
                print(f"tokenmill: error: {error}", file=sys.stderr)
                continue
            if message:
                print(message, file=sys.stderr)
        elif text:
            answer(model, tokenizer, session, line)
    return 0
