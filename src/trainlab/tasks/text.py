"""A causal language model of your choice on a local text dataset (Hugging Face `datasets`).

    task:
      name: hf-text
      path: data/corpus.txt                  # a .txt/.json/.jsonl/.csv/.parquet file, or a save_to_disk folder
      tokenizer: byte                        # byte | char | a local Hugging Face tokenizer folder
      block_size: 64
      model: transformers:GPT2LMHeadModel    # a Hugging Face class is built from its config class
      model_args: {n_layer: 2, n_head: 2, n_embd: 64, n_positions: 64}

The text column is joined, tokenised, cut into non-overlapping windows (inputs, next tokens)
and split into training and held-out windows with `split_seed`. `vocab_size` is filled in
from the tokenizer unless `model_args` gives it. Needs `pip install 'trainlab[hf]'`.
"""

import functools
import inspect
from pathlib import Path

import torch
from pydantic import Field

from ..data.paths import user_cache_dir
from ..data.text import text_tokenizer, windows
from ..errors import SpecError, UserError, one_line
from ..options import Strict
from ..plugin import import_object, register_task
from .base import Task, TaskData
from .python import build_model

BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


class HFTextOptions(Strict):
    path: str = Field(description="a local text/json/csv/parquet file, or a folder saved with save_to_disk")
    split: str = Field("train", description="the dataset split to read")
    text_field: str = Field("text", description="the column holding the text")
    tokenizer: str = Field("byte", description="byte, char, or a local Hugging Face tokenizer folder")
    max_chars: int | None = Field(None, gt=0, description="use only the first N characters")
    block_size: int = Field(64, gt=1)
    val_fraction: float = Field(0.1, gt=0, lt=1, description="windows held out, chosen with split_seed")
    split_seed: int = Field(0, ge=0)
    model: str = Field(description="import path of a causal language model (class or factory)")
    model_args: dict = Field(default_factory=dict)


def import_datasets():
    try:
        import datasets
    except ImportError:
        raise UserError("task hf-text needs Hugging Face datasets: pip install 'trainlab[hf]'") from None
    datasets.disable_progress_bars()
    return datasets


def read_text(path: str, split: str, field: str) -> str:
    datasets = import_datasets()
    where = Path(path).expanduser()
    if not where.exists():
        raise SpecError("task.path", f"{path!r} does not exist")
    try:
        if where.is_dir() and ((where / "dataset_info.json").exists() or (where / "dataset_dict.json").exists()):
            table = datasets.load_from_disk(str(where))
            table = table[split] if isinstance(table, datasets.DatasetDict) else table
        else:
            builder = BUILDERS.get(where.suffix.lower())
            if builder is None:
                raise SpecError("task.path", f"{path!r}: give a {', '.join(BUILDERS)} file or a save_to_disk folder")
            table = datasets.load_dataset(builder, data_files=str(where.resolve()), split=split,
                                          cache_dir=str(user_cache_dir() / "hf-datasets"))
    except (SpecError, UserError):
        raise
    except Exception as exc:  # a malformed file, a missing split: the library's own words, on one line
        raise SpecError("task.path", f"{path!r} could not be read: {one_line(exc)}") from None
    if field not in table.column_names:
        raise SpecError("task.text_field", f"no column {field!r} (columns: {', '.join(table.column_names)})")
    return "\n".join(str(t) for t in table[field])


def tokenizer_of(name: str, text: str):
    if name in ("byte", "char"):
        return text_tokenizer(name, text)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise UserError("task.tokenizer: a Hugging Face tokenizer needs transformers: pip install 'trainlab[hf]'") from None
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as exc:
        raise SpecError("task.tokenizer", f"{name!r} is not a local tokenizer folder ({one_line(exc)})") from None
    return len(tok), (lambda s: tok.encode(s)), (lambda ids: tok.decode(ids))


@functools.lru_cache(maxsize=4)
def text_windows(path: str, split: str, field: str, tokenizer: str, max_chars, block_size: int, val_fraction: float,
                 split_seed: int) -> TaskData:
    text = read_text(path, split, field)[:max_chars]
    vocab, encode, decode = tokenizer_of(tokenizer, text)
    x, y = windows(torch.tensor(encode(text), dtype=torch.long), block_size, block_size)
    if len(x) < 2:
        raise SpecError("task.block_size", f"{path!r} holds {len(text):,} characters: fewer than two windows of "
                                           f"{block_size} tokens")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    cut = min(len(x) - 1, max(1, round(len(x) * val_fraction)))
    test, train = order[:cut].sort().values, order[cut:].sort().values
    return TaskData(x[train], y[train], x[test], y[test], extras={"vocab_size": vocab, "decode": decode},
                    source=f"{path} ({len(text):,} characters, {tokenizer} tokens, vocabulary {vocab}), windows of "
                           f"{block_size}, {cut} of {len(x)} held out (seed {split_seed})")


@register_task
class HFText(Task):
    name, Options = "hf-text", HFTextOptions
    doc = "a causal language model on a local text dataset (Hugging Face datasets; tokenizer byte, char or local)"
    language_model = True

    def load(self, opts, seed: int = 0) -> TaskData:
        return text_windows(opts.path, opts.split, opts.text_field, opts.tokenizer, opts.max_chars, opts.block_size,
                            opts.val_fraction, opts.split_seed)

    def make_model(self, opts, data: TaskData):
        args = dict(opts.model_args)
        if "vocab_size" not in args and takes(import_object(opts.model, "task.model"), "vocab_size"):
            args["vocab_size"] = data.extras["vocab_size"]
        return build_model(opts.model, args, "task.model")


def takes(factory, name: str) -> bool:
    """Whether a model factory accepts `name` (a Hugging Face class: its config does)."""
    if getattr(factory, "config_class", None) is not None:
        return True
    try:
        return name in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
