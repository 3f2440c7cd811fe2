"""Tiny random models built offline (DESIGN.md §5): a byte-level BPE tokenizer trained on a small corpus,
wrapped as a fast tokenizer with the special tokens and the chat template of a real model family, and a
2-layer Llama saved with ``save_pretrained`` so tests load it through the real ``from_pretrained`` path."""

from __future__ import annotations

from pathlib import Path

TRL_TEMPLATES = None  # filled lazily: folder of TRL's bundled original/training templates

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Describe a process of making crepes. Mix the batter, rest it, and cook thin layers in a hot pan.",
    "What is the capital of France? The capital of France is Paris.",
    "You are a helpful assistant. Answer briefly and politely.",
    "Hello! I am an AI assistant. How can I assist you today?",
    "def add(a, b):\n    return a + b\n",
    '{"name": "search_recipes", "arguments": {"ingredients": ["chicken", "rice"]}}',
    "### Instruction:\nTranslate to French.\n\n### Response:\nBonjour le monde.",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 1000 and punctuation: ; , . ! ? - ( ) [ ] { }",
]

SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>",
    "<s>", "</s>", "[INST]", "[/INST]", "<pad>",
    "<|prompter|>", "<|assistant|>", "<|system|>",
]  # fmt: skip

# Mistral-7B-Instruct-v0.1's template (not bundled by TRL, which cannot patch it).
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token + ' ' }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# SmolLM2-135M-Instruct's own template (plain ChatML without markers; adds a default system prompt).
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# family -> (template source, bos, eos, pad, add bos when encoding plain text)
FAMILIES = {
    "chatml": ("smollm2", None, "<|im_end|>", "<|endoftext|>", False),
    "qwen2_5": ("trl:qwen2_5.jinja", None, "<|im_end|>", "<|endoftext|>", False),
    "llama3": ("trl:llama3.jinja", "<|begin_of_text|>", "<|eot_id|>", None, True),
    "llama3_1": ("trl:llama3_1.jinja", "<|begin_of_text|>", "<|eot_id|>", None, True),
    "gemma": ("trl:gemma.jinja", "<bos>", "<eos>", "<pad>", True),
    "mistral": ("mistral", "<s>", "</s>", None, True),
    "none": (None, None, "<|endoftext|>", None, False),  # a base model without a chat template (GPT-2 like)
}


def trl_template(name: str) -> str:
    import trl

    return (Path(trl.__file__).parent / "chat_templates" / name).read_text()


def _template_text(source: str | None) -> str | None:
    if source is None:
        return None
    if source == "smollm2":
        return SMOLLM2_TEMPLATE
    if source == "mistral":
        return MISTRAL_TEMPLATE
    return trl_template(source.removeprefix("trl:"))


def build_tokenizer(family: str):
    """A fast BPE tokenizer with the special tokens and chat template of ``family``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    source, bos, eos, pad, add_bos = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_CORPUS * 3, trainer=trainer)
    if add_bos and bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    kwargs = {"eos_token": eos}
    if bos:
        kwargs["bos_token"] = bos
    if pad:
        kwargs["pad_token"] = pad
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kwargs)
    template = _template_text(source)
    if template:
        fast.chat_template = template
    return fast


def build_tiny_model(folder: Path, family: str = "chatml", seed: int = 0) -> Path:
    """Save a 2-layer random Llama with ``family``'s tokenizer into ``folder`` and return it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer(family)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.2,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_smol_tiny_model(folder: Path) -> Path:
    """A 2-layer random Llama (hidden 32) with SmolLM2-135M-Instruct's real tokenizer and chat template."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from core.training.models import resolve_model_source

    source = resolve_model_source("bundled:SmolLM2-135M-Instruct")
    tokenizer = AutoTokenizer.from_pretrained(source.path, gguf_file=source.gguf_file)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                         initializer_range=0.2, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
