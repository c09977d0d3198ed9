"""Continuous batching: which sequences run this step and how many tokens each computes.

Every step: running sequences first (one decode token each, then the next prefill chunks), then waiting
sequences are admitted while the per-step token budget, the sequence limit and free KV blocks allow. Decode
rows and prefill chunks share the step: the model runner packs chunks into short rows, so a prefill chunk
does not pad the decode rows to its length (see model_runner.py).
When a running sequence needs a block and none is free, the most recently admitted sequence is preempted
by recompute (its blocks are freed; it goes back to the front of the queue) — the engine never crashes on
a full pool.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, SequenceStatus


@dataclass
class ScheduledChunk:
    seq: Sequence
    start: int  # first token position computed this step
    count: int  # how many tokens

    @property
    def completes_sequence(self) -> bool:
        """After this chunk every known token (and every draft) has K/V, so the step's logits pick the next token."""
        return self.start + self.count == self.seq.num_tokens + len(self.seq.draft_token_ids)


@dataclass
class SchedulerOutput:
    chunks: list[ScheduledChunk] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(chunk.count for chunk in self.chunks)


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int = 64, max_num_batched_tokens: int = 512):
        if max_num_seqs < 1 or max_num_batched_tokens < 1:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1")
        self.blocks = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    # ---- queue management ----
    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish(self, seq: Sequence, reason: str) -> None:
        """Mark finished and free its blocks (safe to call on a sequence in either queue)."""
        if seq.is_finished:
            return
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        self.blocks.free_all(seq.block_table)
        seq.block_table = []
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)

    # ---- one step ----
    def schedule(self) -> SchedulerOutput:
        """Decode rows first (each needs one token, so the budget never starves them), then continuing prefill
        chunks, then newly admitted sequences."""
        decoding = [seq for seq in self.running if seq.num_uncomputed_tokens == 1]
        prefilling = [seq for seq in self.running if seq.num_uncomputed_tokens > 1]
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        for seq in decoding + prefilling:
            if budget == 0:
                break
            if seq.status is not SequenceStatus.RUNNING:
                continue  # preempted earlier in this loop
            count = self._fit_drafts(seq, budget)
            if not self._grow(seq, seq.num_computed_tokens + count, out):
                continue
            out.chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, count))
            budget -= count
        if not out.preempted:
            self._admit(budget, out)
        return out

    def _fit_drafts(self, seq: Sequence, budget: int) -> int:
        """The tokens `seq` computes this step; its drafts are cut to the budget and dropped when their blocks
        are not free (speculation never preempts another sequence)."""
        count = min(seq.num_uncomputed_tokens + len(seq.draft_token_ids), budget)
        if seq.draft_token_ids:
            needed = self.blocks.blocks_needed(seq.num_computed_tokens + count) - len(seq.block_table)
            if needed > self.blocks.num_free_blocks:
                count = seq.num_uncomputed_tokens
            del seq.draft_token_ids[max(count - seq.num_uncomputed_tokens, 0):]
        return count

    def _grow(self, seq: Sequence, num_tokens: int, out: SchedulerOutput) -> bool:
        """Give `seq` blocks for `num_tokens` tokens, preempting later sequences; False if `seq` itself went."""
        needed = self.blocks.blocks_needed(num_tokens) - len(seq.block_table)
        while needed > self.blocks.num_free_blocks:
            victim = self.running[-1]
            self._preempt(victim, out)
            if victim is seq:
                return False
        for _ in range(max(needed, 0)):
            seq.block_table.append(self.blocks.allocate())
        return True

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.running.remove(seq)
        self.blocks.free_all(seq.block_table)
        seq.reset_for_recompute()
        self.waiting.appendleft(seq)
        out.preempted.append(seq)
        out.chunks = [chunk for chunk in out.chunks if chunk.seq is not seq]
        self.num_preemptions += 1

    def _admit(self, budget: int, out: SchedulerOutput) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if not seq.block_table:
                self._attach_prefix(seq)
            count = min(seq.num_uncomputed_tokens, budget)
            needed = self.blocks.blocks_needed(seq.num_computed_tokens + count) - len(seq.block_table)
            if needed > self.blocks.num_free_blocks:
                self.blocks.free_all(seq.block_table)  # give back prefix hits; retry next step
                seq.block_table, seq.block_hashes, seq.num_computed_tokens = [], [], 0
                break
            for _ in range(needed):
                seq.block_table.append(self.blocks.allocate())
            self.waiting.popleft()
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.chunks.append(ScheduledChunk(seq, seq.num_computed_tokens, count))
            budget -= count
        return budget

    def _attach_prefix(self, seq: Sequence) -> None:
        if seq.params.prompt_logprobs is not None:
            return  # prompt logprobs need logits at every prompt position, so nothing may be skipped
        # at least one token is always computed, so the step yields logits for the next token
        blocks, hashes = self.blocks.lookup_prefix(seq.all_token_ids, seq.num_tokens - 1, seq.prefix_root)
        seq.block_table, seq.block_hashes = blocks, hashes
        seq.num_computed_tokens = len(blocks) * self.blocks.block_size
        if seq.num_preemptions == 0:
            seq.num_cached_prompt_tokens = seq.num_computed_tokens

    # ---- after the model ran ----
    def record_computed(self, chunk: ScheduledChunk) -> None:
        """Advance the sequence and publish its newly completed blocks to the prefix cache."""
        seq = chunk.seq
        seq.num_computed_tokens = chunk.start + chunk.count
        size = self.blocks.block_size
        tokens = None
        while len(seq.block_hashes) < seq.num_computed_tokens // size:
            tokens = tokens or seq.all_token_ids
            index = len(seq.block_hashes)
            parent = seq.block_hashes[-1] if seq.block_hashes else seq.prefix_root
            digest = self.blocks.register_full_block(
                seq.block_table[index], parent, tuple(tokens[index * size:(index + 1) * size]))
            seq.block_hashes.append(digest)
