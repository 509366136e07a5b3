"""The payloads of `make bench-data` (bench/data.py), made the same way
by every interpreter: stdlib only, deterministic.

- ``bytes``: a list of 10 bytes objects of 100 KB, ``range``:
  ``list(range(10000))``, ``dict``: 10,000 str -> int (the payloads of
  CPython's discussion of InterpreterPoolExecutor, gh-125864);
- ``vocab``: a vocabulary-like dict of str -> tuple of ints (token ids,
  postings), VOCAB_WORDS words: about 50 MB of objects in memory, which
  is what a data archive's image holds.

``probe(name)``: the key (or index) a worker's first lookup uses.
"""
import random

VOCAB_WORDS = 85000
NAMES = ("bytes", "range", "dict", "vocab")


def make(name):
    if name == "bytes":
        return [bytes([i]) * 100000 for i in range(10)]
    if name == "range":
        return list(range(10000))
    if name == "dict":
        return {"key%d" % i: i for i in range(10000)}
    r = random.Random(14)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {}
    for i in range(VOCAB_WORDS):
        word = "".join(r.choice(letters) for _ in range(r.randint(3, 12)))
        vocab[word + str(i)] = tuple(r.randrange(100000)
                                     for _ in range(r.randint(1, 24)))
    return vocab


def probe(name):
    return {"bytes": 5, "range": 5000, "dict": "key5000"}.get(name)


def vocab_probe(data):
    """A key from the middle of the vocabulary."""
    for i, key in enumerate(data):
        if i == VOCAB_WORDS // 2:
            return key
