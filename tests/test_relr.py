"""The RELR decoder of include/pycds/relr.h (the runtime table of
prelinked images, docs/FORMAT.md): slot by slot, a bitmap at a time, and
entered part-way (a run-once copy starts at its span), each checked
against an encoder written here from the format's description."""
import os
import random
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_WORDS = 63


def encode(slots):
    """The RELR words of ``slots`` (increasing multiples of 8): an address,
    then bitmaps of the 63 words after it while they hold slots."""
    words, i = [], 0
    while i < len(slots):
        words.append(slots[i])
        base = slots[i] + 8
        i += 1
        while True:
            bitmap = 0
            while i < len(slots) and 0 <= slots[i] - base < RUN_WORDS * 8:
                bitmap |= 1 << ((slots[i] - base) // 8)
                i += 1
            if not bitmap:
                break
            words.append(bitmap << 1 | 1)
            base += RUN_WORDS * 8
    return words


@pytest.fixture(scope="module")
def decoder(tmp_path_factory):
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    exe = str(tmp_path_factory.mktemp("relr") / "relr_decode")
    subprocess.run([cc, "-O2", "-Wall", "-Werror", "-std=c11",
                    "-I", os.path.join(ROOT, "include"),
                    os.path.join(ROOT, "tests", "c", "relr_decode.c"),
                    "-o", exe], check=True)

    def decode(words, seek):
        text = "\n".join(str(w) for w in [seek] + words) + "\n"
        out = subprocess.run([exe], input=text, capture_output=True,
                             text=True, check=True).stdout
        return [line.split() for line in out.splitlines()]
    return decode


def slot_lists(rng):
    yield []
    yield [8]
    yield [8 * k for k in range(1, 200)]            # dense: bitmaps
    for _ in range(40):
        slots, at = [], 8 * rng.randrange(1, 1 << 20)
        for _ in range(rng.randrange(1, 400)):
            slots.append(at)
            # Mostly neighbours, sometimes a gap past a bitmap's reach.
            at += 8 * rng.choice([1, 1, 1, 2, 3, 62, 63, 64, 65, 500])
        yield slots


def test_decodes_what_was_encoded(decoder):
    rng = random.Random(11)
    for slots in slot_lists(rng):
        words = encode(slots)
        seeks = [0, 1 << 62] + ([rng.choice(slots), rng.choice(slots) + 1,
                                 rng.choice(slots) - 8, slots[-1]]
                                if slots else [])
        for seek in seeks:
            every, grouped, after = decoder(words, seek)
            want = [str(s) for s in slots]
            assert every == want and grouped == want
            assert after == [str(s) for s in slots if s >= seek], (seek, words)


def test_bitmap_without_address_is_malformed(decoder):
    words = [(0b101 << 1) | 1, 64]
    assert decoder(words, 0) == [["M"], ["M"], ["M"]]
    assert decoder([64, (1 << 1) | 1, (1 << 1) | 1], 100) == [
        ["64", "72", "576"], ["64", "72", "576"], ["576"]]
