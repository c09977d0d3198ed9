"""What every decoder-only model shares: the layer loop, masks, rotary tables, logits, weight loading.

An architecture file subclasses CausalLM, builds its layers, and overrides the small hooks
(`embed_scale`, `sanitize`, `final_logit_softcap`) where its family differs.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..cache.base import Cache
from ..cache.dynamic import DynamicCache
from ..config import ModelConfig
from ..execution.ops import TORCH_OPS, TorchOps
from ..execution.policy import ExecutionPolicy, ExecutionPolicyError, dequantized_policy, moved_policy
from ..layers.attention import Attention
from ..layers.lora import NO_LORA, LoraAdapters, LoraBatch
from ..layers.mask import AttentionMask, build_attention_mask
from ..layers.quantized_linear import QuantizedEmbedding, dense_copy, is_quantized, set_gemm_plan, set_precision
from ..layers.rope import RotaryEmbedding


@dataclass
class CausalLMOutput:
    logits: torch.Tensor  # [batch, kept positions, vocab]
    past_key_values: Cache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    loss: torch.Tensor | None = None  # only when `labels` were given

    def __getitem__(self, key):
        return getattr(self, key)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100,
                   num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """transformers' causal-LM loss: position t predicts label t+1, in float32, `ignore_index` labels skipped;
    the mean over counted tokens, or the sum over `num_items_in_batch` when given (gradient accumulation)."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(f"labels must have shape [batch, positions] = {tuple(logits.shape[:2])} matching the "
                         f"logits (set logits_to_keep=0); got {tuple(labels.shape)}")
    shifted = nn.functional.pad(labels.to(logits.device), (0, 1), value=ignore_index)[:, 1:]
    flat_logits, flat_labels = logits.float().reshape(-1, logits.shape[-1]), shifted.reshape(-1)
    if num_items_in_batch is None:
        return nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index)
    total = nn.functional.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index, reduction="sum")
    return total / num_items_in_batch


class DecoderModel(nn.Module):
    """Token embeddings → layers → final norm. Layers expose `sliding_window` and `rope_key`."""

    def __init__(self, embed_tokens: nn.Module, layers: list[nn.Module], norm: nn.Module,
                 rotaries: dict[str, RotaryEmbedding], embed_scale: float | None = None):
        super().__init__()
        self.embed_tokens = embed_tokens
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.rotaries = nn.ModuleDict(rotaries)
        self.embed_scale = embed_scale

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        if self.embed_scale is not None:
            # scale rounded to the activation dtype, as the reference implementations do
            hidden = hidden * torch.tensor(self.embed_scale, dtype=hidden.dtype)
        return hidden

    def forward(self, hidden, attention_mask, position_ids, cache, output_hidden_states=False,
                ops: TorchOps = TORCH_OPS, lora: LoraBatch = NO_LORA):
        batch, query_length, _ = hidden.shape
        past_length = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past_length, past_length + query_length, device=hidden.device)
            position_ids = position_ids.unsqueeze(0).expand(batch, -1)
        rope = {key: rotary(position_ids, hidden.dtype) for key, rotary in self.rotaries.items()}
        masks: dict[int | None, AttentionMask] = {}
        all_hidden = [hidden] if output_hidden_states else None
        for layer in self.layers:
            window = getattr(layer, "sliding_window", None)
            if window not in masks:
                masks[window] = build_attention_mask(
                    attention_mask, past_length, query_length, batch, hidden.device, window
                )
            hidden = layer(hidden, rope.get(getattr(layer, "rope_key", "default")), masks[window], cache, ops, lora)
            if all_hidden is not None:
                all_hidden.append(hidden)
        hidden = self.norm(hidden, ops)
        if all_hidden is not None:
            all_hidden[-1] = hidden
        return hidden, all_hidden


class CausalLM(nn.Module):
    """Base of every architecture: `self.model` is a DecoderModel, `self.lm_head` maps to the vocabulary.

    `generate` and `save_pretrained` are composed on by the assembly (assembly/pretrained_model.py), which sits
    above generation and saving; a model knows nothing of either."""

    config: ModelConfig
    model: DecoderModel
    lm_head: nn.Linear
    final_logit_softcap: float | None = None

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.generation_config = None
        # how the model runs; the loader replaces this ATen-only default with the policy it chose
        self.execution_policy = ExecutionPolicy()
        self.lora_adapters = LoraAdapters()  # loaded LoRA adapters (assembly/adapters.py loads them)

    @property
    def execution_policy(self) -> ExecutionPolicy:
        """How the model runs (execution/policy.py): the kernel set each forward receives, and the precision
        its quantized layers compute in, which assigning a policy sets on them (the architectures never see it)."""
        return self._execution_policy

    @execution_policy.setter
    def execution_policy(self, policy: ExecutionPolicy) -> None:
        self._execution_policy = policy
        set_precision(self, policy.precision)
        set_gemm_plan(self, policy.gemm)  # after the precision: a shape's rule depends on its kernel

    # ---- hooks an architecture may override ----
    @classmethod
    def sanitize(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Turn a checkpoint's tensors into this module's parameter names (drop buffers, fix quirks)."""
        weights = {name: t for name, t in weights.items() if not name.endswith("rotary_emb.inv_freq")}
        if config.tie_word_embeddings:
            weights.pop("lm_head.weight", None)  # some checkpoints store the tied copy too
        return weights

    @classmethod
    def checkpoint_weights(cls, config: ModelConfig, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The inverse of sanitize: this module's tensors under the names and layout checkpoints use."""
        if config.tie_word_embeddings:
            weights = {name: t for name, t in weights.items() if name != "lm_head.weight"}
        return weights

    @classmethod
    def checkpoint_config(cls, config_dict: dict) -> dict:
        """config.json as transformers expects it for this family (default: ModelConfig's own fields)."""
        return config_dict

    def assemble(self, layers: list[nn.Module], norm: nn.Module, rotaries: dict[str, RotaryEmbedding],
                 embed_scale: float | None = None, lm_head_bias: bool = False) -> None:
        """Set up embed → layers → norm → lm_head; an architecture's __init__ builds the parts and calls this."""
        config = self.config
        self.model = DecoderModel(nn.Embedding(config.vocab_size, config.hidden_size), layers, norm, rotaries,
                                  embed_scale=embed_scale)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=lm_head_bias)
        self.tie_weights()

    def tie_weights(self) -> None:
        if not self.config.tie_word_embeddings:
            return
        embed = self.model.embed_tokens
        if isinstance(embed, QuantizedEmbedding):
            self.lm_head = embed.as_linear()
        elif not isinstance(self.lm_head, nn.Linear):
            # the head was the quantized embedding's view: after dequantize() it becomes a plain Linear again
            self.lm_head = nn.Linear(embed.weight.shape[1], embed.weight.shape[0], bias=False, device="meta")
            self.lm_head.weight = embed.weight
        else:
            self.lm_head.weight = embed.weight

    # ---- the forward pass ----
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = True,
        logits_to_keep: int | torch.Tensor = 0,
        inputs_embeds: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        labels: torch.Tensor | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
        adapter_names: list[str | None] | None = None,
        **unused,
    ) -> CausalLMOutput:
        """`adapter_names`: each batch row's LoRA adapter (None: the base model); absent, the active adapter."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        hidden = self.model.embed(input_ids) if inputs_embeds is None else inputs_embeds
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        cache = past_key_values if use_cache else None
        lora = self.lora_adapters.batch(adapter_names, hidden.shape[0], hidden.device)
        hidden, all_hidden = self.model(hidden, attention_mask, position_ids, cache, output_hidden_states,
                                        ops=self.execution_policy.ops, lora=lora)
        if isinstance(logits_to_keep, int):
            kept = hidden[:, -logits_to_keep:] if logits_to_keep > 0 else hidden
        else:
            kept = hidden[:, logits_to_keep]
        # a strided slice would make the vocabulary matmul a bmm over a copied weight (1.7x slower at batch 8)
        logits = self.lm_head(kept.contiguous())
        if self.final_logit_softcap is not None:
            logits = torch.tanh(logits / self.final_logit_softcap) * self.final_logit_softcap
        loss = None if labels is None else causal_lm_loss(logits, labels, num_items_in_batch=num_items_in_batch)
        return CausalLMOutput(logits=logits, past_key_values=cache,
                              hidden_states=tuple(all_hidden) if all_hidden is not None else None, loss=loss)

    __call__ = nn.Module.__call__

    # ---- conveniences users of transformers expect ----
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def num_parameters(self) -> int:
        seen = {id(p): p.numel() for p in self.parameters()}
        # quantized layers hold bytes, not parameters: count their logical weights (a tied head once)
        seen.update({module.blocks.data_ptr(): module.quantized_weight.shape.numel()
                     for module in self.modules() if is_quantized(module)})
        return sum(seen.values())

    def is_quantized(self) -> bool:
        """Whether some weights are kept in GGUF block formats (see layers/quantized_linear.py)."""
        return any(is_quantized(module) for module in self.modules())

    def dequantize(self):
        """Replace every quantized layer by its float32 equivalent (as transformers' `model.dequantize()`)."""
        for name, module in list(self.named_modules()):
            if is_quantized(module) and name != "lm_head":
                self.set_submodule(name, dense_copy(module))
        if is_quantized(self.lm_head) and not self.config.tie_word_embeddings:
            self.lm_head = dense_copy(self.lm_head)
        self.tie_weights()
        self.fuse_projections()
        self.lora_adapters.rebind(self)  # the adapters' targets are the new float modules
        # dense weights: transformers' arithmetic again, bit for bit (the C kernels that match it still serve)
        self.execution_policy = dequantized_policy(self.execution_policy)
        return self

    def set_execution_policy(self, policy: ExecutionPolicy) -> None:
        """Run under another policy (e.g. SDPA instead of the attention kernel); its weight format must be the
        model's. To change device or dtype, use `to()`, which moves the weights and rebuilds the policy."""
        held = "gguf-blocks" if self.is_quantized() else "dense"
        if policy.weight_format != held:
            raise ExecutionPolicyError(f"the model holds {held} weights; a {policy.weight_format} policy cannot "
                                       f"run it (dequantize() or reload instead)")
        self.execution_policy = policy

    def to(self, *args, **kwargs):
        device, dtype = torch._C._nn._parse_to(*args, **kwargs)[:2]
        before = self.execution_policy
        after = moved_policy(before, device, dtype if dtype is not None and dtype.is_floating_point else None)
        changed = [change for change in after.changes_from(before) if not change.startswith(("device", "dtype"))]
        if changed:
            warnings.warn(f"tokenmill: moving the model changes its execution policy ({'; '.join(changed)}); "
                          f"now {after.describe()}", RuntimeWarning, stacklevel=2)
        if before.weight_format == "gguf-blocks" and after.weight_format == "dense":
            self.dequantize()  # the GGUF block kernels run on the CPU in float32 only
        moved = super().to(*args, **kwargs)
        self.lora_adapters.to(device, dtype if dtype is not None and dtype.is_floating_point else None)
        self.tie_weights()  # a move that cannot swap tensors in place (e.g. to meta) makes new parameters
        self.execution_policy = after
        return moved

    # the shorthands go through to(), so the policy follows them too
    def cuda(self, device=None):
        return self.to(torch.device("cuda", device) if isinstance(device, int) else device or "cuda")

    def cpu(self):
        return self.to("cpu")

    def float(self):
        return self.to(torch.float32)

    def half(self):
        return self.to(torch.float16)

    def bfloat16(self):
        return self.to(torch.bfloat16)

    def double(self):
        return self.to(torch.float64)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def early_exit(self, num_layers: int) -> CausalLM:
        """This model's first `num_layers` decoder layers, then its final norm and lm_head (the drafter of
        self-speculative decoding). A shallow view: every weight is shared, none copied."""
        total = len(self.model.layers)
        if not 0 < num_layers < total:
            raise ValueError(f"assistant_early_exit must be between 1 and {total - 1} (the model has {total} "
                             f"layers), got {num_layers}")
        decoder = copy.copy(self.model)
        decoder._modules = dict(self.model._modules)  # its own module table, so the original keeps all its layers
        decoder._modules["layers"] = nn.ModuleList(list(self.model.layers)[:num_layers])
        view = copy.copy(self)
        view._modules = dict(self._modules)
        view._modules["model"] = decoder
        return view

    def resize_token_embeddings(self, new_num_tokens: int | None = None, pad_to_multiple_of: int | None = None,
                                mean_resizing: bool = True) -> nn.Embedding:
        """Grow or shrink the vocabulary; kept rows are untouched, new rows start at the mean embedding."""
        from .resize import resize_token_embeddings

        if self.is_quantized():
            self.dequantize()  # new rows are float: the whole table becomes float first
        return resize_token_embeddings(self, new_num_tokens, pad_to_multiple_of, mean_resizing)

    def reset_non_persistent_buffers(self, fuse: bool = True) -> None:
        """Rotary tables are derived, not loaded: rebuild them after a meta-device construction. fuse=False
        leaves the projections apart (a placement fuses only the layers it keeps in memory)."""
        for rotary in self.model.rotaries.values():
            rotary.inv_freq = rotary._initial_inv_freq().to(self.device)
        if fuse:
            self.fuse_projections()  # build_model calls this once the weights are in place

    def fuse_projections(self) -> None:
        """Fuse q/k/v and gate/up matmuls in every layer that supports it (parameter names are unchanged)."""
        for module in self.modules():
            if module is not self and hasattr(module, "fuse_projections"):
                module.fuse_projections()
