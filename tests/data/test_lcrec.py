"""The LC-Rec reader: partial and malformed files, and the two Amazon 2014 data sets."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_data

from u2qt.data.lcrec import LCRecFormatError, clean_text, item_text, read_lcrec


def write_pair(directory: Path, inter, items, name="Toy"):
    """Writes NAME.inter.json / NAME.item.json; a str is written verbatim (for broken JSON)."""
    for suffix, value in (("inter", inter), ("item", items)):
        text = value if isinstance(value, str) else json.dumps(value)
        (directory / f"{name}.{suffix}.json").write_text(text, encoding="utf-8")
    return directory


ITEMS = {
    "0": {"title": "Red  Pen", "brand": "Acme", "categories": "Office, Pens", "description": ""},
    "1": {"title": "AT&amp;T Phone", "brand": "", "categories": [["Office", "Phones"], ["Office"]],
          "description": "<b>Loud</b> ringer.<br/>Wall   mount."},
    "2": {"title": "", "brand": "", "categories": [], "description": ""},
    "10": {"title": "Stapler", "asin": "B000"},
}


def test_partial_files_numbering_texts_and_report(tmp_path):
    inter = {"2": [0, 1, 10, 1], "10": ["10", 0], "1": [], "0": [2, 2, 7]}
    data = read_lcrec(write_pair(tmp_path, inter, ITEMS))
    assert data.name == "Toy"
    # Decimal ids sort numerically: "10" after "2"; the unknown item 7 is kept (default).
    assert data.user_ids == ["0", "1", "2", "10"]
    assert data.item_ids == ["0", "1", "2", "7", "10"]
    assert data.num_items == 5
    index = data.item_index()
    assert index == {"0": 1, "1": 2, "2": 3, "7": 4, "10": 5}
    assert [s.tolist() for s in data.sequences] == [[3, 3, 4], [], [1, 2, 5, 2], [5, 1]]
    assert all(s.dtype == np.int32 for s in data.sequences)
    assert data.item_texts == [
        "Title: Red Pen; Brand: Acme; Categories: Office, Pens",
        "Title: AT&T Phone; Categories: Office, Phones; Description: Loud ringer. Wall mount.",
        "",
        "",
        "Title: Stapler",
    ]
    r = data.report
    assert (r.n_users, r.n_items, r.n_interactions, r.n_items_in_item_json) == (4, 5, 9, 4)
    assert r.items_missing_from_item_json == 1 and r.examples["items_missing_from_item_json"] == ("7",)
    assert r.unknown_items_dropped == 0
    assert r.items_without_text == 2 and r.examples["items_without_text"] == ("2", "7")
    assert r.items_never_interacted == 0
    assert r.users_with_empty_sequences == 1 and r.examples["users_with_empty_sequences"] == ("1",)
    assert (r.repeated_interactions, r.consecutive_repeats, r.users_with_repeats) == (2, 1, 2)
    assert "items_missing_from_item_json: 1 (e.g. 7)" in r.summary()


def test_unknown_items_drop_and_error(tmp_path):
    write_pair(tmp_path, {"u": [0, 7, 1, 8]}, ITEMS)
    dropped = read_lcrec(tmp_path, unknown_items="drop")
    assert dropped.item_ids == ["0", "1", "2", "10"]
    assert dropped.sequences[0].tolist() == [1, 2]
    assert dropped.report.unknown_items_dropped == 2
    assert dropped.report.items_missing_from_item_json == 2
    assert dropped.report.items_never_interacted == 2
    with pytest.raises(LCRecFormatError, match=r"Toy\.inter\.json: 2 item ids are not in Toy\.item\.json, e\.g\. 7, 8"):
        read_lcrec(tmp_path, unknown_items="error")


def test_string_ids_sort_as_strings(tmp_path):
    items = {"b": {"title": "B"}, "a10": {"title": "A10"}, "a9": {"title": "A9"}}
    data = read_lcrec(write_pair(tmp_path, {"x": ["a9", "b"], "7": ["a10"]}, items))
    assert data.item_ids == ["a10", "a9", "b"] and data.user_ids == ["7", "x"]
    assert [s.tolist() for s in data.sequences] == [[1], [2, 3]]


def test_item_text_rules():
    long = "word " * 1000
    text = item_text({"description": long, "title": "T"}, "9", max_description_chars=50)
    assert text.startswith("Title: T; Description: word word")
    assert text.endswith("word...") and len(text) <= len("Title: T; Description: ") + 53
    assert item_text({"categories": ["A", ["B", ["C", "A"]]]}, "9") == "Categories: A, B, C"
    assert item_text({"title": None, "brand": " X "}, "9") == "Brand: X"
    assert item_text({"asin": "B0"}, "9") == ""
    assert clean_text("a&nbsp;b &lt;3 <p>c</p>\n\td") == "a b <3 c d"


@pytest.mark.parametrize("inter, items, message", [
    ('{"u": [1, 2],\n  "v": [3 4]}', ITEMS, r"Toy\.inter\.json: invalid JSON at line 2, column 11"),
    ({"u": [0]}, '{"0": {"title": "x"},}', r"Toy\.item\.json: invalid JSON at line 1, column 22"),
    ("[[0, 1]]", ITEMS, r"Toy\.inter\.json: the top level must be a JSON object, got list"),
    ({"u": [0], "alice": {"0": 1}}, ITEMS, r"Toy\.inter\.json: the sequence of user 'alice' must be a list"),
    ({"alice": [0, 1.5]}, ITEMS, r"user 'alice' position 1: item id must be an integer or a string, got 1\.5"),
    ({"alice": [None]}, ITEMS, r"user 'alice' position 0: .* got None"),
    ({"alice": [True]}, ITEMS, r"user 'alice' position 0: .* got True"),
    ('{"u": [0], "u": [1]}', ITEMS, r"Toy\.inter\.json: key 'u' appears twice"),
    ({"u": [0]}, {"0": "a pen"}, r"Toy\.item\.json: item '0' must be an object, got str"),
    ({"u": [0]}, {"0": {"title": 5}}, r"Toy\.item\.json: item '0' field 'title' must be a string, got int"),
    ({"u": [0]}, {"0": {"categories": {"a": 1}}}, r"item '0' field 'categories' must be a string or"),
    ({"u": [0]}, {"0": {"categories": [["a", 3]]}}, r"item '0' field 'categories' holds a int"),
])
def test_malformed_files_fail_clearly(tmp_path, inter, items, message):
    write_pair(tmp_path, inter, items)
    with pytest.raises(LCRecFormatError, match=message):
        read_lcrec(tmp_path)


def test_not_utf8(tmp_path):
    write_pair(tmp_path, {"u": [0]}, ITEMS)
    (tmp_path / "Toy.item.json").write_bytes(b'{"0": {"title": "\xff"}}')
    with pytest.raises(LCRecFormatError, match=r"Toy\.item\.json: not UTF-8"):
        read_lcrec(tmp_path)


def test_name_inference_and_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_lcrec(tmp_path / "nowhere")
    with pytest.raises(LCRecFormatError, match="found none; pass name="):
        read_lcrec(tmp_path)
    write_pair(tmp_path, {"u": [0]}, ITEMS, name="A")
    write_pair(tmp_path, {"u": [1]}, ITEMS, name="B")
    with pytest.raises(LCRecFormatError, match="found A, B; pass name="):
        read_lcrec(tmp_path)
    assert read_lcrec(tmp_path, "B").sequences[0].tolist() == [2]
    (tmp_path / "B.item.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"B\.item\.json is missing"):
        read_lcrec(tmp_path, "B")
    with pytest.raises(ValueError, match="unknown_items"):
        read_lcrec(tmp_path, "A", unknown_items="ignore")


@pytest.mark.parametrize("directory, name, users, items, interactions, textless", [
    ("amazon-beauty-2014", "Beauty", 22363, 12101, 198502, 7),
    ("amazon-office-2014", "Office", 4905, 2420, 53258, 0),
])
def test_amazon_2014(directory, name, users, items, interactions, textless):
    data = read_lcrec(shared_data(directory))
    r = data.report
    assert data.name == name
    assert (r.n_users, r.n_items, r.n_interactions) == (users, items, interactions)
    assert (len(data.user_ids), len(data.item_ids), len(data.sequences)) == (users, items, users)
    assert sum(s.size for s in data.sequences) == interactions
    # The P5/LETTER numbering: item id "k" is item index k + 1.
    assert data.item_ids[:3] == ["0", "1", "2"] and data.item_ids[-1] == str(items - 1)
    assert min(s.min() for s in data.sequences) == 1 and max(s.max() for s in data.sequences) == items
    assert min(s.size for s in data.sequences) >= 5  # 5-core
    assert r.items_missing_from_item_json == 0 and r.users_with_empty_sequences == 0
    assert r.items_without_text == textless and r.repeated_interactions == 0
    assert all(t.startswith(("Title: ", "Brand: ", "Categories: ")) for t in data.item_texts if t)
    assert not any("&amp;" in t or "<br" in t for t in data.item_texts)
    if name == "Office":
        assert data.item_texts[2].startswith("Title: AT&T 210 Corded Phone, Black, 1 Handset; Brand: AT&T; "
                                             "Categories: Office Electronics, Telephones & Accessories")
        assert max(len(t) for t in data.item_texts) < 2600  # descriptions (up to 41k chars) are capped


def test_ids_equal_only_without_leading_zeros_are_a_warning(tmp_path):
    write_pair(tmp_path, {"1": ["7", "8", "9"]}, {"007": {"title": "a"}, "8": {"title": "b"}, "9": {"title": "c"}})
    warnings = read_lcrec(tmp_path).report.warnings
    assert len(warnings) == 1 and "1 item ids match Toy.item.json ids only without leading zeros" in warnings[0]
    assert "'7' vs '007'" in warnings[0]
    write_pair(tmp_path, {"1": ["7", "8"]}, {"7": {"title": "a"}, "8": {"title": "b"}})
    assert read_lcrec(tmp_path).report.warnings == ()
