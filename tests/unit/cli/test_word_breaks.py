"""Text lines of the CLI break between words only (`cli._console.word_breaks`)."""

from itertools import pairwise

from weighted_mtp.cli._console import word_breaks


def _lines(text: str, width: int) -> list[str]:
    cuts = [0, *word_breaks(text, width), len(text)]
    return [text[a:b].rstrip() for a, b in pairwise(cuts)]


def test_words_fill_each_line_up_to_the_width():
    assert _lines("aaa bbb ccc ddd", 7) == ["aaa bbb", "ccc ddd"]
    assert _lines("aaa bbb ccc ddd", 8) == ["aaa bbb", "ccc ddd"]
    assert _lines("aaa bbb ccc ddd", 80) == ["aaa bbb ccc ddd"]


def test_a_word_longer_than_the_line_moves_whole_to_its_own():
    path = "/a/" + "b" * 30 + "/c.jsonl"
    assert _lines(f"written: {path} and results.json", 20) == [
        "written:",
        path,
        "and results.json",
    ]
    assert _lines(path, 10) == [path]  # alone: never cut


def test_double_width_characters_count_twice():
    assert _lines("✔ 数据集 ok", 8) == ["✔ 数据集", "ok"]
