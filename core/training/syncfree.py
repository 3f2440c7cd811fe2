"""Training steps without host synchronisation: TRL's per-step metrics read at log time instead of every step.

TRL 1.16's ``SFTTrainer.compute_loss`` turns the step's entropy, token accuracy and token count into Python floats
as soon as the loss is computed (``.item()`` and ``if num_valid > 0`` on GPU tensors): four device-to-host waits in
every micro-step. Each one stops the host from queuing the backward pass until the forward pass has finished on the
GPU, so the two no longer overlap; on a launch-bound step (LoRA on short rows) the GPU then idles while the host
catches up. :class:`DeferredMetrics` computes the same loss the same way (TRL's fused LM head) and keeps the
metrics on the device, one small tensor per micro-step, until the next ``log`` reads them all at once. The logged
numbers are TRL's: the per-step ratios are averaged over the logging window exactly as TRL averages its floats.

Only the common single-process path is taken over (no custom loss function, no label smoothing, no MoE auxiliary
loss, no ``return_outputs``); everything else goes through TRL unchanged. The batch copy to the GPU is made
non-blocking by the session (``accelerator_config.non_blocking`` with pinned memory), the other per-step wait.
"""

from __future__ import annotations

from typing import Any


class DeferredMetrics:
    """Mix in before ``trl.SFTTrainer``: ``class StudioTrainer(DeferredMetrics, SFTTrainer)``."""

    _pending_metrics: list[Any]
    _pending_tokens: Any

    def _defer_metrics_here(self, return_outputs: bool) -> bool:
        return (
            not return_outputs
            and self.model.training
            and self.compute_loss_func is None
            and self.label_smoother is None
            and not self.aux_loss_enabled
            and self.accelerator.num_processes == 1
            and self.args.loss_type in ("nll", "dft")
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        if not self._defer_metrics_here(return_outputs):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        import torch

        inputs["use_cache"] = False
        outputs = model(**inputs, fused_lm_head=True)
        per_token_loss = -outputs.log_probs  # zero on ignored positions
        if self.args.loss_type == "dft":
            per_token_loss = per_token_loss * outputs.log_probs.exp().detach()
        num_tokens = outputs.label_mask.sum() if num_items_in_batch is None else num_items_in_batch
        loss = per_token_loss.sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())

        with torch.no_grad():
            valid = outputs.label_mask.sum().float()
            safe = valid.clamp(min=1)
            ratios = torch.stack([outputs.entropy.detach().sum().float() / safe, outputs.is_top1.sum().float() / safe])
            ratios = torch.where(valid > 0, ratios, torch.zeros_like(ratios))
        pending = self.__dict__.setdefault("_pending_metrics", [])
        pending.append(ratios)
        if "attention_mask" in inputs:
            count = inputs["attention_mask"].sum()
            self._pending_tokens = count if getattr(self, "_pending_tokens", None) is None else self._pending_tokens + count
        elif "position_ids" in inputs:
            self._total_train_tokens += inputs["position_ids"].size(1) // self._tp_size
        else:
            raise ValueError("Expected 'attention_mask' or 'position_ids' in inputs.")
        self._metrics["train"]["num_tokens"] = [self._total_train_tokens]
        return loss

    def flush_deferred_metrics(self) -> None:
        """Turn the metrics kept on the device into TRL's floats (one host wait for the whole logging window)."""
        pending = self.__dict__.get("_pending_metrics")
        if pending:
            import torch

            values = torch.stack(pending).tolist()
            pending.clear()
            self._metrics["train"]["entropy"].extend(v[0] for v in values)
            self._metrics["train"]["mean_token_accuracy"].extend(v[1] for v in values)
        if getattr(self, "_pending_tokens", None) is not None:
            self._total_train_tokens += int(self._pending_tokens) // self._tp_size
            self._pending_tokens = None
            self._metrics["train"]["num_tokens"] = [self._total_train_tokens]

    def log(self, logs, start_time=None):  # noqa: ANN001
        self.flush_deferred_metrics()
        return super().log(logs, start_time)
