"""The streaming masker: values are masked whichever way the text is cut into chunks."""

import random
import re

import pytest

from secrets_app.masking import MASK, SecretMasker, mask_text, mask_values


def stream(values: list[str], chunks: list[str]) -> tuple[str, list[str]]:
    masker = SecretMasker(values)
    emitted = [masker.feed(chunk) for chunk in chunks]
    emitted.append(masker.flush())
    return "".join(emitted), emitted


def reference(text: str, values: list[str]) -> str:
    """Leftmost occurrence first, the longest value at one position: what re.sub does in one go."""
    ordered = mask_values(values)
    return re.sub("|".join(re.escape(v) for v in ordered), MASK, text) if ordered else text


def test_masks_a_value_in_one_chunk():
    assert mask_text("token=hunter2 ok", ["hunter2"]) == f"token={MASK} ok"


def test_masks_every_occurrence_and_every_value():
    assert mask_text("a1 b22 a1", ["a1", "b22"]) == f"{MASK} {MASK} {MASK}"


def test_a_value_split_across_two_chunks_never_shows_in_part():
    out, emitted = stream(["hunter2"], ["token=hun", "ter2 done"])
    assert out == f"token={MASK} done"
    assert emitted[0] == "token="  # "hun" held back: it could be the start of the value
    assert all("hun" not in piece and "ter2" not in piece for piece in emitted)


def test_a_value_split_into_single_characters():
    value = "s3cr3t-V4lue"
    out, emitted = stream([value], list(f"x{value}y{value}"))
    assert out == f"x{MASK}y{MASK}"
    assert not any(c in "".join(emitted[:-1]) for c in "3V4")


def test_held_back_text_is_at_most_the_longest_value_minus_one():
    masker = SecretMasker(["abcdef", "xyz"])
    assert masker.feed("....abcde") == "...."
    assert masker.held == 5
    assert masker.feed("Q") == "abcdeQ"  # not the value after all: released at once
    assert masker.held == 0


def test_text_that_cannot_start_a_value_is_released_at_once():
    masker = SecretMasker(["secret"])
    assert masker.feed("hello world\n") == "hello world\n"
    assert masker.held == 0


def test_a_shorter_value_that_starts_a_longer_one_waits_for_the_longer():
    out, emitted = stream(["abc", "abcdef"], ["xx abc", "def yy"])
    assert out == f"xx {MASK} yy"
    assert "def" not in "".join(emitted)
    out, _ = stream(["abc", "abcdef"], ["xx abc", "dXf"])
    assert out == f"xx {MASK}dXf"


def test_partial_value_at_the_end_of_the_stream_is_not_a_value():
    out, _ = stream(["hunter2"], ["pw: hunt"])
    assert out == "pw: hunt"


def test_discard_drops_what_is_held():
    masker = SecretMasker(["hunter2"])
    assert masker.feed("cut here: hunte") == "cut here: "
    masker.discard()
    assert masker.flush() == ""


def test_no_values_passes_text_through():
    masker = SecretMasker(["", ""])
    assert not masker.active
    assert masker.feed("anything") == "anything" and masker.flush() == ""


def test_lines_of_a_multi_line_value_are_masked_on_their_own():
    pem = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END KEY-----"
    second = pem.splitlines()[1]
    assert mask_text(f"got {second} here", [pem]) == f"got {MASK} here"
    assert mask_text(pem, [pem]) == MASK
    assert "{" in mask_text("{\n}", ['{\n"k": "v"\n}'])  # short lines alone are left alone


def test_unicode_values_and_text():
    out, _ = stream(["pässwörd✓"], ["ünïcode pä", "sswö", "rd✓ ✓"])
    assert out == f"ünïcode {MASK} ✓"


@pytest.mark.parametrize("seed", range(40))
def test_any_chunking_gives_the_same_text_as_masking_it_whole(seed):
    rng = random.Random(seed)
    alphabet = "ab c\n"
    values = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 3))]
    values = [v for v in values if v.strip()] or ["ab"]
    pieces = [rng.choice(values) if rng.random() < 0.3 else rng.choice(alphabet) for _ in range(80)]
    text = "".join(pieces)
    cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, min(30, len(text) - 1))))
    chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
    out, _ = stream(values, chunks)
    assert out == reference(text, values), (values, chunks)
    longest = max(len(v) for v in mask_values(values))
    masker = SecretMasker(values)
    for chunk in chunks:
        masker.feed(chunk)
        assert masker.held <= longest - 1


def test_no_emitted_piece_reveals_a_whole_value_even_across_pieces():
    value = "TOKEN_abc123"
    rng = random.Random(7)
    text = f"start {value} middle {value}{value} end {value[:5]}"
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(text)), 8))
        chunks = [text[i:j] for i, j in zip([0, *cuts], [*cuts, len(text)])]
        out, _ = stream([value], chunks)
        assert value not in out and out.count(MASK) == 3
