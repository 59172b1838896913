"""Table reading and validation: CSV / Parquet directories and MovieLens-1M."""

import gzip
import os

import numpy as np
import pandas as pd
import pytest
from conftest import REPO

from u2qt.data.movielens import read_movielens
from u2qt.data.tables import DataError, read_table_dir, validate_tables

MOVIELENS = os.path.join(REPO, "..", "shared", "data", "movielens-1m")

USERS = "user_id,gender,age\n1,F,30\n2,M,\n3,,41\n4,M,25\n"
ITEMS = 'item_id,text,price\na,"Red mug, large",3.5\nb,Blue cup,2\nc,,1\n'
EVENTS = (
    "user_id,item_id,timestamp,value\n"
    "1,a,100,5\n"
    "1,b,200,\n"
    "1,b,200,\n"  # exact duplicate
    "9,a,300,1\n"  # unknown user
    "2,z,400,1\n"  # unknown item
    "2,a,500,3\n"
)


def write_dir(path, users=USERS, items=ITEMS, events=EVENTS):
    os.makedirs(path, exist_ok=True)
    for name, text in (("users", users), ("items", items), ("events", events)):
        if text is not None:
            with open(os.path.join(path, f"{name}.csv"), "w") as f:
                f.write(text)
    return str(path)


def test_reads_and_reports(tmp_path):
    tables, report = read_table_dir(write_dir(tmp_path))
    assert tables.users["user_id"].tolist() == ["1", "2", "3", "4"]
    assert tables.users["age"].dtype == np.float64 and np.isnan(tables.users["age"][1])
    assert pd.isna(tables.users["gender"][2])
    assert tables.items["text"].tolist() == ["Red mug, large", "Blue cup", ""]
    ev = tables.events
    assert ev[["user_id", "item_id", "timestamp"]].values.tolist() == [["1", "a", 100], ["1", "b", 200], ["2", "a", 500]]
    assert ev["timestamp"].dtype == np.int64 and np.isnan(ev["value"][1])
    assert (report.users, report.items, report.events, report.events_read) == (4, 3, 3, 6)
    assert (report.events_unknown_user, report.events_unknown_item, report.events_duplicate) == (1, 1, 1)
    assert (report.users_without_events, report.items_without_events) == (2, 1)
    text = str(report)
    assert "2 without events" in text and "unknown user_id" in text and "duplicates" in text


def test_parquet_and_csv_give_the_same_tables(tmp_path):
    csv_dir = write_dir(tmp_path / "csv")
    os.makedirs(tmp_path / "pq")
    for name in ("users", "items", "events"):
        df = pd.read_csv(os.path.join(csv_dir, f"{name}.csv"), dtype={"user_id": str, "item_id": str})
        if name == "events":
            df["timestamp"] = df["timestamp"].astype(np.int64)
        df.to_parquet(tmp_path / "pq" / f"{name}.parquet")
    a, ra = read_table_dir(csv_dir)
    b, rb = read_table_dir(str(tmp_path / "pq"))
    for x, y in ((a.users, b.users), (a.items, b.items), (a.events, b.events)):
        pd.testing.assert_frame_equal(x, y)
    assert (ra.events, ra.events_dropped) == (rb.events, rb.events_dropped)


def test_integer_ids_in_parquet_become_strings(tmp_path):
    pd.DataFrame({"user_id": [1, 2], "x": ["a", "b"]}).to_parquet(tmp_path / "users.parquet")
    pd.DataFrame({"item_id": [10, 11], "text": ["t", "u"]}).to_parquet(tmp_path / "items.parquet")
    pd.DataFrame({"user_id": [1], "item_id": [11], "timestamp": [5]}).to_parquet(tmp_path / "events.parquet")
    tables, _ = read_table_dir(str(tmp_path))
    assert tables.events[["user_id", "item_id"]].values.tolist() == [["1", "11"]]
    assert np.isnan(tables.events["value"][0])


def test_missing_file(tmp_path):
    write_dir(tmp_path, items=None)
    with pytest.raises(DataError, match=r"no items\.csv or items\.parquet"):
        read_table_dir(str(tmp_path))


def test_missing_column_names_file_and_column(tmp_path):
    write_dir(tmp_path, events="user_id,item,timestamp\n1,a,3\n")
    with pytest.raises(DataError, match=r"events\.csv.*missing required column.*'item_id'"):
        read_table_dir(str(tmp_path))


def test_wrong_number_of_fields_names_file_and_line(tmp_path):
    write_dir(tmp_path, events="user_id,item_id,timestamp\n1,a,3\n1,b,4,9,9\n")
    with pytest.raises(DataError, match=r"events\.csv: malformed CSV.*line 3"):
        read_table_dir(str(tmp_path))


def test_non_numeric_timestamp_names_file_and_line(tmp_path):
    write_dir(tmp_path, events="user_id,item_id,timestamp\n1,a,3\n1,b,4\n2,a,yesterday\n")
    with pytest.raises(DataError, match=r"events\.csv: line 4: timestamp must be a number, got 'yesterday'"):
        read_table_dir(str(tmp_path))


def test_missing_timestamp_is_an_error(tmp_path):
    write_dir(tmp_path, events="user_id,item_id,timestamp\n1,a,\n")
    with pytest.raises(DataError, match=r"events\.csv: line 2: timestamp"):
        read_table_dir(str(tmp_path))


def test_duplicate_ids_are_named(tmp_path):
    write_dir(tmp_path, users="user_id,g\n1,F\n2,M\n1,M\n")
    with pytest.raises(DataError, match=r"users\.csv: duplicate user_id: 1 repeated, e\.g\. \['1'\]"):
        read_table_dir(str(tmp_path))
    write_dir(tmp_path, users=USERS, items="item_id,text\nq,x\nq,y\n")
    with pytest.raises(DataError, match=r"items\.csv: duplicate item_id.*'q'"):
        read_table_dir(str(tmp_path))


def test_empty_tables(tmp_path):
    write_dir(tmp_path, events="user_id,item_id,timestamp\n")
    with pytest.raises(DataError, match=r"events\.csv: the events table is empty"):
        read_table_dir(str(tmp_path))
    write_dir(tmp_path, events=EVENTS, users="")
    with pytest.raises(DataError, match=r"users\.csv: empty file"):
        read_table_dir(str(tmp_path))


def test_validate_in_memory_names_the_table():
    users = pd.DataFrame({"user_id": ["a"]})
    items = pd.DataFrame({"item_id": ["x"]})
    events = pd.DataFrame({"user_id": ["a"], "item_id": ["x"], "timestamp": [1]})
    with pytest.raises(DataError, match=r"\[items\]: missing required column.*'text'"):
        validate_tables(users, items, events)


# --- MovieLens ---------------------------------------------------------------------------------


def write_movielens(path, ratings_name="ratings.dat", ratings=None):
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "users.dat"), "w") as f:
        f.write("1::F::1::10::48067\n2::M::56::16::70072-1234\n3::M::25::15::55117\n")
    with open(os.path.join(path, "movies.dat"), "wb") as f:
        f.write("1::Toy Story (1995)::Animation|Children's|Comedy\n".encode("latin-1"))
        f.write("2::Misérables, Les (1995)::Drama|Musical\n".encode("latin-1"))
    text = ratings or "1::1::5::978300760\n1::2::3::978302109\n2::1::4::978301968\n"
    opener = gzip.open if ratings_name.endswith(".gz") else open
    with opener(os.path.join(path, ratings_name), "wt") as f:
        f.write(text)
    return str(path)


def test_movielens_small(tmp_path):
    tables, report = read_movielens(write_movielens(tmp_path, "ratings_part.dat.gz"))
    u = tables.users
    assert u.columns.tolist() == ["user_id", "gender", "age", "occupation", "zip", "zip3"]
    assert u.iloc[1].tolist() == ["2", "M", "56", "16", "70072-1234", "700"]
    it = tables.items
    assert it["text"].tolist() == [
        "Toy Story (1995). Genres: Animation, Children's, Comedy",
        "Misérables, Les (1995). Genres: Drama, Musical",
    ]
    assert it["genres"][0] == "Animation|Children's|Comedy" and it["year"].tolist() == [1995.0, 1995.0]
    assert tables.events["value"].tolist() == [5.0, 3.0, 4.0]
    assert report.users_without_events == 1


@pytest.mark.parametrize(
    "ratings, message",
    [
        ("1::1::5::978300760\n1::2::3\n", r"ratings\.dat: line 2: expected 4 fields.*timestamp is empty or missing"),
        ("1::1::5::978300760\n\n1::2::3::97830x\n", r"ratings\.dat: line 3: timestamp must be an integer, got '97830x'"),
        ("1::1::5::978300760::7\n", r"ratings\.dat: line 1: expected 4 fields.*got 5"),
        ("1::1::5::978300760\n1::1::5::978300760::7\n", r"ratings\.dat: line 2: expected 4 fields"),
        ("1::1::5::978300760\n1::1::5::978300760::7::8\n", r"ratings\.dat: malformed line.*line 2"),
    ],
)
def test_movielens_malformed_lines(tmp_path, ratings, message):
    with pytest.raises(DataError, match=message):
        read_movielens(write_movielens(tmp_path, ratings=ratings))


def test_movielens_missing_ratings(tmp_path):
    path = write_movielens(tmp_path)
    os.remove(os.path.join(path, "ratings.dat"))
    with pytest.raises(DataError, match=r"no ratings\.dat"):
        read_movielens(path)


@pytest.mark.skipif(not os.path.isdir(MOVIELENS), reason=f"MovieLens-1M not found at {MOVIELENS}")
def test_movielens_1m_shared_copy():
    tables, report = read_movielens(MOVIELENS)
    assert (report.users, report.items, report.events) == (6040, 3883, 487650)
    assert report.events_dropped == 0
    with_events = set(tables.events["user_id"].astype(int))
    assert with_events == set(range(1, 3000))
    assert report.users_without_events == 6040 - 2999
    assert sorted(tables.users["age"].unique().tolist(), key=int) == ["1", "18", "25", "35", "45", "50", "56"]
    assert tables.items["text"].str.contains("é").any()  # decoded as Latin-1
    assert tables.items["year"].notna().all()


def test_a_utf8_byte_order_mark_does_not_rename_the_first_column(tmp_path):
    write_dir(tmp_path)
    (tmp_path / "users.csv").write_bytes(b"\xef\xbb\xbf" + USERS.encode())
    tables, _ = read_table_dir(str(tmp_path))
    assert list(tables.users.columns)[:2] == ["user_id", "gender"]


def test_latin1_is_read_when_the_config_says_so(tmp_path):
    write_dir(tmp_path)
    (tmp_path / "users.csv").write_bytes("user_id,city\n1,Orléans\n2,Paris\n3,Nîmes\n4,Lyon\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"users\.csv: line 2: byte 0xe9 is not utf-8 text.*data\.encoding"):
        read_table_dir(str(tmp_path))
    tables, _ = read_table_dir(str(tmp_path), encoding="latin-1")
    assert tables.users["city"].tolist() == ["Orléans", "Paris", "Nîmes", "Lyon"]


# --- a directory read block by block (TableDirChunks, for data larger than memory) ---------------


def _messy_dir(path, fmt="csv"):
    """300 synthetic users whose events are in random order, plus what a real export holds: an
    event of an unknown user, one written with leading zeros, one of an unknown item, a duplicate."""
    from u2qt.data.synthetic import make_synthetic
    t, _ = make_synthetic(300, 60, seed=3)
    users = pd.concat([t.users, t.users.iloc[:1].assign(user_id="7")], ignore_index=True)
    ev = t.events.sample(frac=1.0, random_state=0).reset_index(drop=True)
    extra = ev.iloc[:4].copy()
    extra["user_id"] = ["nobody", "007", extra["user_id"].iloc[2], extra["user_id"].iloc[3]]
    extra.loc[extra.index[2], "item_id"] = "no-such-item"
    events = pd.concat([ev.iloc[:50], extra, ev.iloc[50:]], ignore_index=True)
    os.makedirs(path, exist_ok=True)
    for name, df in (("users", users), ("items", t.items), ("events", events)):
        if fmt == "csv":
            df.to_csv(os.path.join(path, f"{name}.csv"), index=False)
        else:
            df.to_parquet(os.path.join(path, f"{name}.parquet"), index=False, row_group_size=37)
    return str(path)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_blocks_of_a_directory_are_the_whole_read_cut_into_blocks(tmp_path, fmt):
    from u2qt.data.load import _table_chunks
    from u2qt.data.tables import TableDirChunks
    path = _messy_dir(tmp_path / "data", fmt)
    whole, report = read_table_dir(path)
    assert report.events_unknown_user == 2 and report.events_unknown_item == 1 and report.events_duplicate == 1
    assert any("leading zeros" in w for w in report.warnings)
    scratch = str(tmp_path / "scratch")
    blocks = TableDirChunks(path, 64, scratch, read_rows=97)  # batches that cut across blocks
    got = list(blocks)
    want = [t for t, _ in _table_chunks(whole, 64)]
    assert len(got) == len(want) == 5
    for a, b in zip(got, want):
        pd.testing.assert_frame_equal(a.users, b.users.reset_index(drop=True))
        # A block keeps the file's order of events; each user's events are in the same order.
        by_user = np.argsort(pd.Index(a.users["user_id"]).get_indexer(a.events["user_id"]), kind="stable")
        pd.testing.assert_frame_equal(a.events.iloc[by_user].reset_index(drop=True), b.events.reset_index(drop=True))
    assert blocks.report == report
    assert blocks.user_ids == whole.users["user_id"].tolist()
    assert not os.path.exists(scratch)


def test_blocks_name_the_line_of_a_bad_event_and_a_repeated_user(tmp_path):
    from u2qt.data.tables import TableDirChunks
    path = _messy_dir(tmp_path / "data")
    events = pd.read_csv(os.path.join(path, "events.csv"), dtype=str)
    events.loc[250, "timestamp"] = "yesterday"
    events.to_csv(os.path.join(path, "events.csv"), index=False)
    with pytest.raises(DataError, match=r"events\.csv: line 252: timestamp must be a number, got 'yesterday'"):
        list(TableDirChunks(path, 64, str(tmp_path / "s"), read_rows=97))
    with pytest.raises(DataError, match=r"events\.csv: line 252: timestamp must be a number"):
        read_table_dir(path)  # the same words as the whole read
    users = pd.read_csv(os.path.join(path, "users.csv"), dtype=str)
    pd.concat([users, users.iloc[[5]]]).to_csv(os.path.join(path, "users.csv"), index=False)
    with pytest.raises(DataError, match="duplicate user_id"):
        list(TableDirChunks(path, 64, str(tmp_path / "s"), read_rows=97))
