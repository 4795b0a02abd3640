"""Tasks: data + a model factory + a loss + metrics, registered as plugins.

Built in: `mnist-mlp`, `mnist-cnn`, `shakespeare-gpt`, `denoise-2layer`, `moe-lm`; and for
your own work `python` (model, data and loss by import path), `hf-text` (a local text
dataset through Hugging Face `datasets`) and `vision` (torchvision datasets). A task of your
own: subclass `Task` and decorate it with `trainlab.register_task` (docs/plugins.md).
"""

from ..data.text import VOCAB, decode, encode, windows
from . import denoise, mnist, moe, python, shakespeare, text, vision  # noqa: F401  the built-in tasks
from .base import IGNORE, Task, TaskData, perplexity, sample_text

__all__ = ["IGNORE", "VOCAB", "Task", "TaskData", "decode", "encode", "perplexity", "sample_text", "windows"]
