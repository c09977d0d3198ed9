"""A `tokenizers.Tokenizer` rebuilt from a GGUF's `tokenizer.ggml.*` metadata.

Two vocabulary kinds are handled:
* "gpt2": byte-level BPE. Tokens are already spelled in the byte alphabet; the merges are in the file;
  the text split comes from `tokenizer.ggml.pre` (llama.cpp's pre-tokenizer name).
* "llama": SentencePiece BPE with byte fallback. The file has scores, not merges, so merges are derived:
  a pair is mergeable when both halves and their concatenation are tokens, ranked by the merged token's score.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from ..errors import CheckpointError

# llama.cpp token types
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6
SPIECE_SPACE = "\u2581"
GEMMA_MASK_TOKEN = "<mask>"
MAX_MERGE_DERIVATION_WORK = 1 << 31  # character copies: ~2 s, two hundred times a real vocabulary's need

LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPLIT_BY_PRE = {
    **dict.fromkeys(("llama3", "llama-v3", "llama-bpe", "falcon3", "pixtral", "dbrx", "smaug-bpe", "lfm2"),
                    LLAMA3_SPLIT),
    **dict.fromkeys(("qwen2", "stablelm2", "deepseek-r1-qwen", "megrez"), QWEN2_SPLIT),
    "tekken": TEKKEN_SPLIT,
    **dict.fromkeys(("gpt-4o", "llama4"), GPT4O_SPLIT),
}
# llama.cpp isolates every digit before the GPT-2 split for these vocabularies
DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"}


def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    mapping = {byte: chr(byte) for byte in printable}
    extra = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def _required(metadata: dict, key: str, path) -> list:
    value = metadata.get(key)
    if not value:
        raise CheckpointError(path, f"no {key} in the metadata: cannot build a tokenizer")
    return value


def build_tokenizer(metadata: dict, path=None) -> Tokenizer:
    kind = metadata.get("tokenizer.ggml.model")
    if kind == "gpt2":
        tokenizer = _byte_level_bpe(metadata, path)
    elif kind == "llama":
        tokenizer = _sentencepiece_bpe(metadata, path)
    else:
        raise CheckpointError(path, f"unsupported tokenizer.ggml.model {kind!r} (tokenmill reads 'gpt2' and 'llama')")
    _add_special_tokens(tokenizer, metadata)
    tokenizer.post_processor = _post_processor(metadata)
    return tokenizer


# ---- byte-level BPE --------------------------------------------------------------------------------


def _byte_level_bpe(metadata: dict, path) -> Tokenizer:
    tokens = _required(metadata, "tokenizer.ggml.tokens", path)
    merges = _required(metadata, "tokenizer.ggml.merges", path)
    alphabet = byte_alphabet()
    spelled = set(alphabet.values())
    # a token written in plain text (e.g. one with a real space) is respelled in the byte alphabet
    vocab = {
        token if set(token) <= spelled else "".join(alphabet[b] for b in token.encode("utf-8")): index
        for index, token in enumerate(tokens)
    }
    pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = byte_level_pre_tokenizer(metadata.get("tokenizer.ggml.pre"))
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def byte_level_pre_tokenizer(pre: str | None):
    split = SPLIT_BY_PRE.get(pre)
    if split is not None:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in DIGIT_SPLIT_PRE:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2])
    return gpt2


# ---- SentencePiece BPE -----------------------------------------------------------------------------


def _sentencepiece_bpe(metadata: dict, path) -> Tokenizer:
    tokens = list(_required(metadata, "tokenizer.ggml.tokens", path))
    architecture = metadata.get("general.architecture", "")
    gemma = architecture.startswith("gemma")
    if gemma:
        # Gemma files spell runs of spaces with real spaces; the model sees them as "▁" after normalizing
        tokens = [t.replace(" ", SPIECE_SPACE) if " " in t and not t.strip() else t for t in tokens]
        # Gemma's scores do not follow its merge order; the token order does
        priorities = [-index for index in range(len(tokens))]
    else:
        priorities = metadata.get("tokenizer.ggml.scores") or [-index for index in range(len(tokens))]
    vocab = {token: index for index, token in enumerate(tokens)}
    _check_derivation_cost(tokens, path)
    merges = derive_merges(tokens, vocab, priorities)
    unk_id = metadata.get("tokenizer.ggml.unknown_token_id")
    unk = tokens[unk_id] if gemma and unk_id is not None else None
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    decode_steps = [decoders.Replace(SPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if gemma:
        tokenizer.normalizer = normalizers.Replace(" ", SPIECE_SPACE)
        tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    elif architecture == "phi3":
        # Phi-3 prefixes "▁" in the normalizer, so text starting with a space keeps both
        tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend(SPIECE_SPACE),
                                                     normalizers.Replace(" ", SPIECE_SPACE)])
        decode_steps.append(decoders.Strip(" ", 1, 0))
    else:
        prefix = metadata.get("tokenizer.ggml.add_space_prefix", True)
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement=SPIECE_SPACE, prepend_scheme="first" if prefix else "never", split=False)
        if prefix:
            decode_steps.append(decoders.Strip(" ", 1, 0))
    tokenizer.decoder = decoders.Sequence(decode_steps)
    return tokenizer


def _check_derivation_cost(tokens: list[str], path) -> None:
    """Deriving merges tries every cut of every token, copying both halves: work grows with the squared token
    length. Real vocabularies need ~10^7 character copies; a file of long tokens could ask for 10^13."""
    work = sum(len(token) * len(token) for token in tokens)
    if work > MAX_MERGE_DERIVATION_WORK:
        longest = max(tokens, key=len)
        raise CheckpointError(path, f"tokenizer.ggml.tokens: tokens too long to derive merges from (the longest has "
                                    f"{len(longest)} characters; squared lengths sum to {work}, limit "
                                    f"{MAX_MERGE_DERIVATION_WORK})")


def derive_merges(tokens: list[str], vocab: dict[str, int], priorities: list[float]) -> list[tuple[str, str]]:
    """Every split of a token into two tokens, best merged-token priority first.

    Among equal priorities the longer left piece wins, then the longer right piece, then vocabulary order.
    """
    splits = _splits_in(vocab)
    order = sorted(range(len(tokens)), key=priorities.__getitem__, reverse=True)
    merges: list[tuple[str, str]] = []
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and priorities[order[stop]] == priorities[order[start]]:
            stop += 1
        group = [splits(tokens[i]) for i in order[start:stop] if vocab.get(tokens[i]) == i]
        if len(group) == 1:
            merges.extend(group[0])
        else:  # ties across tokens: order by piece lengths, stable in vocabulary order
            merges.extend(sorted((pair for splits in group for pair in splits),
                                 key=lambda pair: (-len(pair[0]), -len(pair[1]))))
        start = stop
    return merges


def _splits_in(vocab):
    def splits(token: str) -> list[tuple[str, str]]:
        """(left, right) cuts of `token` with both halves in the vocabulary, longest left piece first."""
        return [(token[:cut], token[cut:]) for cut in range(len(token) - 1, 0, -1)
                if token[:cut] in vocab and token[cut:] in vocab]
    return splits


# ---- special tokens --------------------------------------------------------------------------------


def _add_special_tokens(tokenizer: Tokenizer, metadata: dict) -> None:
    """Control tokens become special added tokens, user-defined ones plain added tokens (both matched whole)."""
    tokens = metadata["tokenizer.ggml.tokens"]
    types = metadata.get("tokenizer.ggml.token_type") or []
    byte_level = metadata.get("tokenizer.ggml.model") == "gpt2"
    spelled = set(byte_alphabet().values())
    control = [AddedToken(token, normalized=False, special=True)
               for token, kind in zip(tokens, types)
               # in a byte-level vocabulary a "control" token outside the byte alphabet is a mislabel
               if kind == TOKEN_CONTROL and (not byte_level or set(token) <= spelled)]
    if control:
        tokenizer.add_special_tokens(control)
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    user_defined = [AddedToken(token, normalized=False, special=False)
                    for token, kind in zip(tokens, types) if kind == TOKEN_USER_DEFINED and token in vocab]
    if user_defined:
        tokenizer.add_tokens(user_defined)
    for key in ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"):
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        if token_id is not None and 0 <= token_id < len(tokens) and tokenizer.id_to_token(token_id) is not None:
            tokenizer.add_special_tokens([AddedToken(tokenizer.id_to_token(token_id), normalized=False, special=True)])


def _add_bos_eos(metadata: dict) -> tuple[bool, bool]:
    # SentencePiece vocabularies that do not say otherwise get a BOS (llama.cpp's default)
    default_bos = metadata.get("tokenizer.ggml.model") == "llama"
    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", default_bos))
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    return add_bos, add_eos


def _post_processor(metadata: dict):
    """Prepend BOS / append EOS when the file asks for it."""
    add_bos, add_eos = _add_bos_eos(metadata)
    tokens = metadata["tokenizer.ggml.tokens"]
    bos_id, eos_id = metadata.get("tokenizer.ggml.bos_token_id"), metadata.get("tokenizer.ggml.eos_token_id")
    prefix = [(tokens[bos_id], bos_id)] if add_bos and bos_id is not None else []
    suffix = [(tokens[eos_id], eos_id)] if add_eos and eos_id is not None else []
    if not prefix and not suffix:
        return None
    head, tail = [t for t, _ in prefix], [t for t, _ in suffix]
    single = head + ["$A:0"] + tail
    pair = head + ["$A:0"] + tail + [f"{t}:1" for t in head] + ["$B:1"] + [f"{t}:1" for t in tail]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=list(dict.fromkeys(prefix + suffix)))


def tokenizer_config(metadata: dict) -> dict:
    """The tokenizer_config.json a GGUF implies."""
    tokens = metadata.get("tokenizer.ggml.tokens") or []

    def token(key: str) -> str | None:
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        return tokens[token_id] if token_id is not None and 0 <= token_id < len(tokens) else None

    add_bos, add_eos = _add_bos_eos(metadata)
    architecture = metadata.get("general.architecture", "")
    config = {
        "bos_token": token("bos_token_id"),
        "eos_token": token("eos_token_id"),
        "unk_token": token("unknown_token_id"),
        "pad_token": token("padding_token_id"),
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "model_max_length": metadata.get(f"{architecture}.context_length", int(1e30)),
        "clean_up_tokenization_spaces": False,
    }
    if architecture.startswith("gemma"):  # what transformers' Gemma tokenizer class sets by default
        config["padding_side"] = "left"
        if GEMMA_MASK_TOKEN in tokens:
            config["mask_token"] = GEMMA_MASK_TOKEN
    if isinstance(metadata.get("tokenizer.chat_template"), str):
        config["chat_template"] = metadata["tokenizer.chat_template"]
    return config
