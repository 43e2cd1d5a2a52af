"""What every built-in pipeline is made of besides its models: tokenizers built in memory, and the name it records.

Nothing here reads a file or the hub: each vocabulary is every byte, so any prompt tokenizes.
"""

from __future__ import annotations

from diffusers import DiffusionPipeline
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import CLIPTokenizer, PreTrainedTokenizerFast

BUILTIN_PREFIX = "builtin:"


def clip_tokenizer() -> CLIPTokenizer:
    """CLIP's tokenizer over a byte-level vocabulary with no merges (CLIP needs model_max_length to pad)."""
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in _bytes_to_unicode():
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer(max_length: int = 512) -> PreTrainedTokenizerFast:
    """A T5-style tokenizer (pad 0, eos 1 appended, unk 2) over a byte-level vocabulary, for T5 text encoders."""
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for char in _bytes_to_unicode():
        vocab.setdefault(char, len(vocab))
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=max_length)


def named(model: str, pipe: DiffusionPipeline) -> DiffusionPipeline:
    """Record `model` as the pipeline's name, as `from_pretrained` does for a hub id (profile selection reads it)."""
    pipe.register_to_config(_name_or_path=model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _bytes_to_unicode() -> list[str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars
