"""`apply_chat_template` and `get_chat_template` for `Tokenizer`, with transformers' arguments and rules."""

from __future__ import annotations

from ..errors import ChatTemplateError
from .chat_conversation import render_conversation


class ChatTemplateMixin:
    """Expects `self.chat_template`, `self.special_tokens_map` and `self.__call__` from `Tokenizer`."""

    def get_chat_template(self, chat_template: str | None = None, tools=None) -> str:
        """The template text to use: a passed template or template name, else the tokenizer's (its 'tool_use' one
        when tools are given and it has named templates)."""
        own = self.chat_template
        if isinstance(own, dict):
            if chat_template is not None and chat_template in own:
                return own[chat_template]
            if chat_template is not None:
                return chat_template
            if tools is not None and "tool_use" in own:
                return own["tool_use"]
            if "default" in own:
                return own["default"]
            raise ChatTemplateError(
                f"this tokenizer has several chat templates and none is 'default'; pass chat_template= one of "
                f"{sorted(own)}"
            )
        if chat_template is not None:
            return chat_template
        if own is None:
            raise ChatTemplateError(
                "this tokenizer has no chat template (tokenizer.chat_template is None) and none was passed"
            )
        return own

    def apply_chat_template(
        self,
        conversation,
        tools=None,
        documents=None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool | str = False,
        tokenize: bool = True,
        padding=False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors=None,
        return_dict: bool = True,
        return_assistant_tokens_mask: bool = False,
        tokenizer_kwargs: dict | None = None,
        **template_kwargs,
    ):
        """Render a conversation (or a batch of them) with the chat template; tokenize it unless tokenize=False.

        As in transformers 5: returns the text when tokenize=False, else a BatchEncoding (return_dict=True, the
        default) or just the input ids. Template variables: messages, tools, documents, add_generation_prompt,
        the special tokens (bos_token, eos_token, ...) and every extra keyword argument.
        """
        if template_kwargs.pop("sanitize_control_tokens", False):
            raise ChatTemplateError("sanitize_control_tokens=True is not supported by tokenmill")
        return_dict = return_dict and tokenize
        template = self.get_chat_template(chat_template, tools)
        conversations, is_batched = _split_batch(conversation)
        _check_options(add_generation_prompt, continue_final_message, return_assistant_tokens_mask, return_dict)
        variables = {**self.special_tokens_map, **template_kwargs}
        rendered, spans = [], []
        for messages in conversations:
            text, generation_spans = render_conversation(
                template, messages, tools=tools, documents=documents, add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message, track_generation=return_assistant_tokens_mask,
                variables=variables,
            )
            rendered.append(text)
            spans.append(generation_spans)
        if not tokenize:
            return rendered if is_batched else rendered[0]
        encoded = self(rendered if is_batched else rendered[0], padding=padding, truncation=truncation,
                       max_length=max_length, add_special_tokens=False, return_tensors=return_tensors,
                       **(tokenizer_kwargs or {}))
        if not return_dict:
            return encoded["input_ids"]
        if return_assistant_tokens_mask:
            masks = [_assistant_mask(encoded, row, row_spans) for row, row_spans in enumerate(spans)]
            encoded["assistant_masks"] = masks if is_batched or return_tensors else masks[0]
            encoded.convert_to_tensors(return_tensors)
        return encoded


def _check_options(add_generation_prompt, continue_final_message, return_assistant_tokens_mask, return_dict) -> None:
    if return_assistant_tokens_mask and not return_dict:
        raise ChatTemplateError("return_assistant_tokens_mask=True needs return_dict=True and tokenize=True")
    if continue_final_message and add_generation_prompt:
        raise ChatTemplateError(
            "continue_final_message and add_generation_prompt cannot be combined: the first continues the final "
            "message, the second starts a new assistant message"
        )
    if continue_final_message and return_assistant_tokens_mask:
        raise ChatTemplateError("continue_final_message cannot be combined with return_assistant_tokens_mask")


def _split_batch(conversation) -> tuple[list, bool]:
    """(list of conversations, whether a batch was passed), dropping message keys whose value is None."""
    if isinstance(conversation, (list, tuple)) and len(conversation) == 0:
        raise ChatTemplateError("cannot apply a chat template to an empty conversation")
    if not isinstance(conversation, (list, tuple)):
        conversation = getattr(conversation, "messages", conversation)
        if not isinstance(conversation, (list, tuple)):
            raise ChatTemplateError(f"a conversation is a list of message dicts, got {type(conversation).__name__}")
    is_batched = isinstance(conversation[0], (list, tuple)) or hasattr(conversation[0], "messages")
    conversations = conversation if is_batched else [conversation]
    cleaned = []
    for messages in conversations:
        messages = getattr(messages, "messages", messages)
        cleaned.append([
            {key: value for key, value in message.items() if value is not None} if isinstance(message, dict)
            else message
            for message in messages
        ])
    return cleaned, is_batched


def _assistant_mask(encoded, row: int, spans: list[tuple[int, int]]) -> list[int]:
    """1 for tokens inside `{% generation %}` spans of row `row`, 0 elsewhere (transformers' rule)."""
    length = len(encoded.encodings[row].ids)
    mask = [0] * length
    for start_char, end_char in spans:
        start_token = encoded.char_to_token(row, start_char)
        end_token = encoded.char_to_token(row, end_char - 1)
        if start_token is None:
            break
        for index in range(start_token, end_token + 1 if end_token else length):
            mask[index] = 1
    return mask
