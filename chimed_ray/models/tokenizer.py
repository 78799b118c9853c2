"""Byte-level BPE tokenizer trained on the bundled corpus, saved in HF format with the ChiMed
chat template, and loading of any local HF tokenizer."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"
HUMAN_TAG, BOT_TAG = "[human]:", "[bot]:"

# ChiMed-GPT's prompt format. Every assistant turn ends with EOS so the model learns to stop; the
# newline after it belongs to the next prompt. Training (data/sft.py) builds the same string
# segment by segment, and a test checks that both agree.
CHIMED_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[human]:' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '[bot]:' + message['content'] + eos_token + '\\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '[bot]:' }}{% endif %}"
)


def _iter_corpus_texts(files: Iterable[Path]) -> Iterator[str]:
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                record = json.loads(line) if line.startswith("{") else {"text": line}
                yield from _strings_in(record)


def _strings_in(value: object) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings_in(item)


def train_tokenizer(files: list[Path], output_dir: str | Path, vocab_size: int = 6000):
    """Train a byte-level BPE tokenizer on JSONL/text `files` and save it as an HF tokenizer.

    Returns:
        The `PreTrainedTokenizerFast`, already saved to `output_dir`.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[PAD, BOS, EOS, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_iter_corpus_texts(files), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=4096,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHIMED_CHAT_TEMPLATE
    wrapped.save_pretrained(str(output_dir))
    return wrapped


def bundled_tokenizer_dir() -> Path:
    """Directory of the tokenizer trained on the bundled corpus, trained on first use.

    The cache key is a hash of the corpus files, so editing the data retrains it.
    """
    from chimed_ray.data.embedded import embedded_files

    files = embedded_files("pretrain") + embedded_files("sft")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.read_bytes())
    cache_root = Path(os.environ.get("CHIMED_RAY_CACHE", Path.home() / ".cache" / "chimed_ray"))
    target = cache_root / f"tokenizer-{digest.hexdigest()[:16]}"
    if not (target / "tokenizer.json").is_file():
        from chimed_ray.utils.files import atomic_directory

        with atomic_directory(target) as tmp:
            train_tokenizer(files, tmp)
    return target


def load_tokenizer(path: str = "", trust_remote_code: bool = False):
    """Load an HF tokenizer from a local directory, or the bundled one when `path` is empty.

    A tokenizer without a pad token gets its EOS as pad; one without a chat template gets ours.
    """
    from transformers import AutoTokenizer

    from chimed_ray.utils.files import require_dir

    directory = Path(path) if path else bundled_tokenizer_dir()
    require_dir(directory, "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = CHIMED_CHAT_TEMPLATE
    return tokenizer
