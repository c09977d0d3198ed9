"""Which data-parallel replica takes a request: the least loaded (in-flight sequences), unless a replica that
recently served the same prompt prefix is at most `slack` sequences busier, since its prefix cache holds those
blocks already (prefix-cache affinity)."""

from __future__ import annotations

from collections import OrderedDict


class ReplicaRouter:
    """`block_size`: prompt tokens per affinity key (the KV cache reuses whole blocks, so shorter shared prefixes
    gain nothing); `max_blocks`: how deep a prompt's prefix is hashed; `max_keys`: prefixes remembered (LRU)."""

    def __init__(self, num_replicas: int, block_size: int = 16, slack: int = 4, max_blocks: int = 64,
                 max_keys: int = 65536):
        self.loads = [0] * num_replicas  # in-flight sequences per replica
        self.block_size = block_size
        self.slack = slack
        self.max_blocks = max_blocks
        self.max_keys = max_keys
        self._owners: OrderedDict[int, int] = OrderedDict()  # prefix hash → replica that last computed it
        self._next = 0  # round-robin start among equally loaded replicas

    def prefix_keys(self, prompt_token_ids: list[int]) -> list[int]:
        """One hash per whole block of the prompt, each covering every token before it (a hash chain)."""
        keys, key = [], 0
        whole = min(len(prompt_token_ids) // self.block_size, self.max_blocks)
        for block in range(whole):
            start = block * self.block_size
            key = hash((key, tuple(prompt_token_ids[start:start + self.block_size])))
            keys.append(key)
        return keys

    def choose(self, prompt_token_ids: list[int], live: list[bool]) -> int:
        """The replica for a prompt among the `live` ones (ValueError when none is)."""
        candidates = [i for i, up in enumerate(live) if up]
        if not candidates:
            raise ValueError("no replica is running")
        least = min(self.loads[i] for i in candidates)
        for key in reversed(self.prefix_keys(prompt_token_ids)):  # the longest prefix served before wins
            owner = self._owners.get(key)
            if owner is not None and live[owner] and self.loads[owner] <= least + self.slack:
                return owner
        tied = [i for i in candidates if self.loads[i] == least]
        chosen = min(tied, key=lambda i: (i - self._next) % len(self.loads))
        self._next = (chosen + 1) % len(self.loads)
        return chosen

    def assign(self, replica: int, prompt_token_ids: list[int], sequences: int) -> None:
        """Count a request on `replica` and remember it as the holder of the prompt's prefixes."""
        self.loads[replica] += sequences
        for key in self.prefix_keys(prompt_token_ids):
            self._owners[key] = replica
            self._owners.move_to_end(key)
        while len(self._owners) > self.max_keys:
            self._owners.popitem(last=False)

    def release(self, replica: int, sequences: int) -> None:
        self.loads[replica] = max(0, self.loads[replica] - sequences)

    def forget(self, replica: int) -> None:
        """A restarted replica has an empty cache: its prefixes are no longer an argument for it."""
        for key in [k for k, owner in self._owners.items() if owner == replica]:
            del self._owners[key]
        self.loads[replica] = 0
