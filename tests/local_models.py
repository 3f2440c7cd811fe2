"""Model folders and GGUF files as the model library sees them, written in milliseconds (no weights worth the name):
a tiny llama GGUF written with gguf's own writer, and a folder with config.json, tokenizer_config.json, a
safetensors header and a model card."""

from __future__ import annotations

import json
from pathlib import Path

SMOL_TEMPLATE = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{% endif %}")


def write_gguf(path: Path, *, name: str = "tiny", file_type: int = 15, context: int = 4096, vocab: int = 300,
               template: str | None = SMOL_TEMPLATE) -> Path:
    """A tiny llama GGUF written with gguf's own writer: a vocabulary long enough to be skipped, a few tensors."""
    import numpy as np
    from gguf import GGUFWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_license("apache-2.0")
    writer.add_context_length(context)
    writer.add_block_count(2)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(32)
    writer.add_head_count(2)
    writer.add_head_count_kv(1)
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([f"tok{i}" for i in range(vocab)])
    writer.add_array("general.tags", ["a", "b"])
    if template:
        writer.add_chat_template(template)
    writer.add_tensor("token_embd.weight", np.zeros((vocab, 16), dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", np.zeros((16, 16), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_folder(folder: Path, *, template: str | None = SMOL_TEMPLATE, license: str | None = "mit") -> Path:
    """A model folder as the library sees it: config.json, tokenizer_config.json, a safetensors header, a card."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 500,
        "max_position_embeddings": 32768, "torch_dtype": "bfloat16", "tie_word_embeddings": True}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"chat_template": template} if template else {}))
    header = json.dumps({"__metadata__": {"format": "pt"},
                         "a": {"dtype": "BF16", "shape": [500, 64], "data_offsets": [0, 64000]},
                         "b": {"dtype": "BF16", "shape": [64], "data_offsets": [64000, 64128]}}).encode()
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 64128)
    if license:
        (folder / "README.md").write_text(f"---\nlicense: {license}\nextra_gated_prompt: agree\n---\n# Model\n")
    return folder
