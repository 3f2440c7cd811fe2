"""Variable-length FlashAttention without the flash-attn package: PyTorch's own FlashAttention-2 kernel
(``aten::_flash_attention_forward``, built into every CUDA wheel since torch 2.3) plugged into transformers as the
attention implementation ``"sdpa_varlen"``.

Why: transformers' ``flash_attention_2`` needs the flash-attn package (no wheel for most torch/CUDA pairs), and SDPA
on padding-free batches needs a dense block-diagonal mask: PyTorch then falls back to the cuDNN or
memory-efficient kernel, which compute the masked-out blocks and (cuDNN) rebuild an execution plan for every new
sequence length. Measured on an H100 (benchmarks/RESULTS.md) that cost a third of the step's host time. The varlen
kernel takes the sequence boundaries (``cu_seq_lens``) that TRL's padding-free collator already computes on the
CPU, so no mask is built and no masked block is computed.

The function handles the three shapes a training run meets:

* padding-free micro-batches (one row, ``cu_seq_lens_q``/``max_length_q`` from the collator): varlen, causal;
* unpadded batches (probes, generation): the fixed-length kernel, causal aligned bottom-right (right for a KV cache);
* padded batches (2-D ``attention_mask``): tokens are gathered into varlen form and scattered back.

Off CUDA (the tests) the same contract runs through :func:`torch.nn.functional.scaled_dot_product_attention`, one
sequence at a time, so CPU tests check the plumbing and the equivalence with SDPA.
"""

from __future__ import annotations

from typing import Any

NAME = "sdpa_varlen"


def kernel_available(device_kind: str, capability: tuple[int, int] | None = None) -> bool:
    """Whether PyTorch's FlashAttention kernel can run here (CUDA, Ampere or newer, a build that has it)."""
    if device_kind != "cuda":
        return False
    import torch

    if not torch.cuda.is_available() or not torch.backends.cuda.is_flash_attention_available():
        return False
    major, _ = capability if capability is not None else torch.cuda.get_device_capability()
    return major >= 8


def supports_model(model_config: Any) -> bool:
    """Plain causal attention only: no logit soft-capping, no sliding window, no attention sinks, head dim <= 256."""
    get = (model_config.get if isinstance(model_config, dict) else lambda k, d=None: getattr(model_config, k, d))
    if get("attn_logit_softcapping") or get("final_logit_softcapping") or get("sliding_window"):
        return False
    if get("use_sliding_window") or get("layer_types") and any("sliding" in str(t) for t in get("layer_types")):
        return False
    hidden, heads = get("hidden_size") or 0, get("num_attention_heads") or 1
    head_dim = get("head_dim") or hidden // max(1, heads)
    return 0 < head_dim <= 256


def register() -> str:
    """Make ``attn_implementation="sdpa_varlen"`` known to transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    if NAME not in AttentionInterface._global_mapping:
        AttentionInterface.register(NAME, varlen_attention_forward)
        # the flash mask: None when there is no padding (so no dense mask is ever built), else the 2-D padding mask
        ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
    return NAME


def _kernel(q, k, v, cu_q, cu_k, max_q: int, max_k: int, dropout: float, scale: float | None):
    """Causal attention (bottom-right aligned) over ``q`` (T, H, D) / (B, S, H, D) and k, v with H_kv dividing H."""
    import torch

    if not q.is_cuda:
        return _reference(q, k, v, cu_q, cu_k, scale, dropout)
    dtype = q.dtype
    if dtype not in (torch.bfloat16, torch.float16):  # the kernel is 16-bit only (fp32 layers under autocast)
        half = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else torch.bfloat16
        q, k, v = q.to(half), k.to(half), v.to(half)
    out = torch.ops.aten._flash_attention_forward(q, k, v, cu_q, cu_k, max_q, max_k, dropout, True, False,
                                                  scale=scale)[0]
    return out.to(dtype)


def _reference(q, k, v, cu_q, cu_k, scale, dropout: float = 0.0):
    """The same contract through SDPA, one sequence at a time (CPU, tests)."""
    import torch
    import torch.nn.functional as F

    def one(qs, ks, vs):  # (S, H, D), (Sk, Hkv, D)
        groups = qs.shape[1] // ks.shape[1]
        ks, vs = ks.repeat_interleave(groups, dim=1), vs.repeat_interleave(groups, dim=1)
        sq, sk = qs.shape[0], ks.shape[0]
        mask = torch.ones(sq, sk, dtype=torch.bool, device=qs.device).tril(diagonal=sk - sq)
        out = F.scaled_dot_product_attention(qs.transpose(0, 1), ks.transpose(0, 1), vs.transpose(0, 1),
                                             attn_mask=mask, scale=scale, dropout_p=dropout)
        return out.transpose(0, 1)

    if cu_q is None:
        return torch.stack([one(q[b], k[b], v[b]) for b in range(q.shape[0])])
    bq, bk = cu_q.tolist(), cu_k.tolist()
    return torch.cat([one(q[bq[i]:bq[i + 1]], k[bk[i]:bk[i + 1]], v[bk[i]:bk[i + 1]]) for i in range(len(bq) - 1)])


def varlen_attention_forward(
    module: Any,
    query: Any,
    key: Any,
    value: Any,
    attention_mask: Any,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    cu_seq_lens_q: Any = None,
    cu_seq_lens_k: Any = None,
    max_length_q: int | None = None,
    max_length_k: int | None = None,
    **kwargs: Any,
) -> tuple[Any, None]:
    """transformers attention interface: ``query`` (B, H, S, D), ``key``/``value`` (B, H_kv, S_k, D) → output
    (B, S, H, D)."""
    import torch

    if sliding_window is not None or softcap is not None:
        raise NotImplementedError(f"attention {NAME} computes plain causal attention; this model uses "
                                  "sliding-window or soft-capped attention (set model.attn_implementation: sdpa)")
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)  # (B, S, H, D)
    b, s, h, d = q.shape
    sk = k.shape[1]
    if cu_seq_lens_q is not None and b == 1:  # padding-free micro-batch: boundaries from the collator
        cu_k = cu_seq_lens_k if cu_seq_lens_k is not None else cu_seq_lens_q
        max_q = int(max_length_q) if max_length_q is not None else s
        max_k = int(max_length_k) if max_length_k is not None else max_q
        out = _kernel(q[0], k[0], v[0], cu_seq_lens_q.to(torch.int32), cu_k.to(torch.int32), max_q, max_k,
                      dropout, scaling)
        return out.unsqueeze(0), None
    if attention_mask is None or bool(attention_mask.all()):  # no padding
        return _kernel(q, k, v, None, None, s, sk, dropout, scaling), None
    # padded batch: gather the real tokens into varlen form (queries are the last s positions of each row)
    valid_k = attention_mask[:, -sk:].bool()
    valid_q = valid_k[:, -s:]
    idx_q = valid_q.reshape(-1).nonzero().squeeze(1)
    idx_k = valid_k.reshape(-1).nonzero().squeeze(1)
    lens_q, lens_k = valid_q.sum(1, dtype=torch.int32), valid_k.sum(1, dtype=torch.int32)
    cu_q = torch.nn.functional.pad(lens_q.cumsum(0, dtype=torch.int32), (1, 0))
    cu_k = torch.nn.functional.pad(lens_k.cumsum(0, dtype=torch.int32), (1, 0))
    out = _kernel(q.reshape(b * s, h, d)[idx_q], k.reshape(b * sk, -1, d)[idx_k], v.reshape(b * sk, -1, d)[idx_k],
                  cu_q, cu_k, int(lens_q.max()), int(lens_k.max()), dropout, scaling)
    full = out.new_zeros(b * s, h, d)
    full[idx_q] = out
    return full.view(b, s, h, d), None
