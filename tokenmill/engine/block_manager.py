"""KV-cache block bookkeeping: a fixed pool of blocks, reference counts, and prefix caching by content hash.

Pure Python: it hands out block ids; the paged cache owns the tensors those ids index. A full block whose
tokens (and every token before them) are known gets a hash; a later sequence with the same prefix reuses
the block instead of recomputing it. Freed hashed blocks stay reusable until the pool needs them (LRU).
"""

from __future__ import annotations

from collections import OrderedDict


class NoFreeBlocksError(RuntimeError):
    """The pool is exhausted; the scheduler preempts rather than letting this escape."""


def block_hash(parent_hash: int | None, tokens: tuple[int, ...]) -> int:
    """Hash of a full block, chained to the hash of the block before it so equal blocks mean equal prefixes."""
    return hash((parent_hash, tokens))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need num_blocks >= 1 and block_size >= 1, got {num_blocks} and {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))  # pop() hands out low ids first
        self._hash_of: dict[int, int] = {}  # block id -> content hash
        self._block_of: dict[int, int] = {}  # content hash -> block id
        self._evictable: OrderedDict[int, None] = OrderedDict()  # hashed blocks with ref 0, oldest first
        self.prefix_queries = 0  # full prompt blocks looked up
        self.prefix_hits = 0  # of which found cached

    # ---- pool state ----
    @property
    def num_free_blocks(self) -> int:
        return len(self._free) + len(self._evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- allocation ----
    def allocate(self) -> int:
        """A fresh block with reference count 1 (evicting the least recently freed cached block if needed)."""
        if self._free:
            block = self._free.pop()
        elif self._evictable:
            block, _ = self._evictable.popitem(last=False)
            del self._block_of[self._hash_of.pop(block)]
        else:
            raise NoFreeBlocksError(f"all {self.num_blocks} KV blocks are in use")
        self.ref_counts[block] = 1
        return block

    def share(self, block: int) -> int:
        """Take another reference to a block (a prefix-cache hit, or a forked sequence)."""
        if self.ref_counts[block] == 0:
            self._evictable.pop(block, None)
        self.ref_counts[block] += 1
        return block

    def free(self, block: int) -> None:
        if self.ref_counts[block] <= 0:
            raise ValueError(f"block {block} is freed more often than it was allocated")
        self.ref_counts[block] -= 1
        if self.ref_counts[block] == 0:
            if block in self._hash_of:
                self._evictable[block] = None  # keep its content for later prefix hits
            else:
                self._free.append(block)

    def free_all(self, blocks: list[int]) -> None:
        # last blocks first, so a chain's tail is evicted before its head
        for block in reversed(blocks):
            self.free(block)

    # ---- prefix caching ----
    def lookup_prefix(self, token_ids: list[int], max_tokens: int, root: int | None = None
                      ) -> tuple[list[int], list[int]]:
        """Blocks already holding the leading full blocks of `token_ids` (at most `max_tokens` tokens); `root`
        starts the hash chain (the first block's parent), so chains of different roots never meet.

        Returns (block ids, their hashes); the blocks are shared (ref taken) by this call.
        """
        if not self.enable_prefix_caching:
            return [], []
        blocks, hashes, parent = [], [], root
        for start in range(0, max_tokens - self.block_size + 1, self.block_size):
            digest = block_hash(parent, tuple(token_ids[start:start + self.block_size]))
            self.prefix_queries += 1
            block = self._block_of.get(digest)
            if block is None:
                break
            self.prefix_hits += 1
            blocks.append(self.share(block))
            hashes.append(digest)
            parent = digest
        return blocks, hashes

    def register_full_block(self, block: int, parent_hash: int | None, tokens: tuple[int, ...]) -> int | None:
        """Record the content of a block that has just been completely written; returns its hash."""
        if not self.enable_prefix_caching:
            return None
        digest = block_hash(parent_hash, tokens)
        if digest not in self._block_of and block not in self._hash_of:
            self._block_of[digest] = block
            self._hash_of[block] = digest
        return digest

    def reset_prefix_cache(self) -> None:
        for block in list(self._evictable):
            del self._block_of[self._hash_of.pop(block)]
            self._free.append(block)
        self._evictable.clear()
