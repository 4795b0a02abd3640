"""tiny-shakespeare as plain text from the data directory (or a verified download)."""

import functools

from ..errors import UserError
from .paths import download_verified, find_data_file, network_allowed, sha256_of, user_cache_dir

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


@functools.lru_cache(maxsize=1)
def load_shakespeare_text() -> str:
    path = find_data_file(["input.txt", "tinyshakespeare.txt"], ["tinyshakespeare", "shakespeare"])
    if path is None and network_allowed():
        path = download_verified(URL, user_cache_dir() / "tinyshakespeare" / "input.txt",
                                 lambda blob: sha256_of(blob) == SHA256)
    if path is None:
        raise UserError("tiny-shakespeare not found: put input.txt under <data-dir>/tinyshakespeare/ "
                        "and pass --data-dir (or set TRAINLAB_DATA), or allow the download")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"tiny-shakespeare file {path} is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"tiny-shakespeare file {path} cannot be read ({exc.strerror})") from None
    if len(text) < 1000:
        raise UserError(f"tiny-shakespeare file {path} holds {len(text):,} characters; expected the corpus "
                        "(about 1.1 million)")
    return text
