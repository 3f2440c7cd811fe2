"""DeferredMetrics: the same loss and the same logged metrics as TRL, without reading a device value per step."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _rows(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = 6 + (i * 5) % 17
        ids = torch.randint(3, 120, (length,), generator=g).tolist()
        prompt = max(1, length // 3)
        rows.append({"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]})
    return rows


def _tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(WordLevel({"<pad>": 0, "<eos>": 1, "a": 2}, unk_token="<pad>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def _train(deferred: bool, tmp_path, *, padding_free: bool, item_calls: list | None = None):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    from core.training.syncfree import DeferredMetrics

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128))
    base = (DeferredMetrics, SFTTrainer) if deferred else (SFTTrainer,)

    class Counting(*base):
        """Counts the tensor values the loss and metrics code reads on the host (the model's own forward, e.g.
        transformers' mask checks, is not the trainer's doing and is left out)."""

        def compute_loss(self, model, *a, **kw):
            if item_calls is None:
                return super().compute_loss(model, *a, **kw)
            real_item, real_bool = torch.Tensor.item, torch.Tensor.__bool__
            calls, depth = [0], [0]

            def item(t):
                calls[0] += depth[0] == 0
                return real_item(t)

            def truth(t):
                calls[0] += depth[0] == 0
                return real_bool(t)

            enter = model.register_forward_pre_hook(lambda *_: depth.__setitem__(0, depth[0] + 1))
            leave = model.register_forward_hook(lambda *_: depth.__setitem__(0, depth[0] - 1))
            torch.Tensor.item, torch.Tensor.__bool__ = item, truth
            try:
                return super().compute_loss(model, *a, **kw)
            finally:
                torch.Tensor.item, torch.Tensor.__bool__ = real_item, real_bool
                enter.remove()
                leave.remove()
                item_calls.append(calls[0])

    args = SFTConfig(output_dir=str(tmp_path / ("d" if deferred else "t")), max_steps=4, logging_steps=2,
                     per_device_train_batch_size=3, learning_rate=1e-2, report_to="none", save_strategy="no",
                     use_cpu=True, bf16=False, seed=0, padding_free=padding_free, disable_tqdm=True,
                     **({"max_length": None} if padding_free else {}))
    trainer = Counting(model=model, args=args, train_dataset=Dataset.from_list(_rows()), processing_class=_tokenizer(),
                       peft_config=LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    trainer.train()
    return [h for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("padding_free", [False, True], ids=["padded", "padding-free"])
def test_deferred_metrics_log_what_trl_logs(tmp_path, padding_free):
    trl_logs = _train(False, tmp_path, padding_free=padding_free)
    ours = _train(True, tmp_path, padding_free=padding_free)
    assert len(ours) == len(trl_logs) == 2
    for a, b in zip(ours, trl_logs, strict=True):
        for key in ("loss", "entropy", "mean_token_accuracy", "num_tokens", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_a_training_step_reads_no_tensor_value_on_the_host(tmp_path):
    trl_calls, our_calls = [], []
    _train(False, tmp_path, padding_free=False, item_calls=trl_calls)
    _train(True, tmp_path, padding_free=False, item_calls=our_calls)
    assert min(trl_calls) >= 3  # TRL reads entropy, accuracy and the token count back every micro-step
    assert our_calls == [0] * len(our_calls) and len(our_calls) == 4
