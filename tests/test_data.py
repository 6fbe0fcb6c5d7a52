"""Data: text files and vocabularies, splits, the truncated-BPTT batcher, CSV/TSV loading, scalers, windows."""
import numpy as np
import pytest

from rnnfast.data import (MinMaxScaler, Scaler, StandardScaler, StreamBatcher, Vocab, chronological_split,
                          forecast_windows, load_csv_column, load_text_labels, read_text, require_length,
                          sliding_windows, split_ids)
from rnnfast.errors import CheckpointError, DataError

CHINESE = "床前明月光，疑是地上霜。举头望明月，低头思故乡。\n"


def write(tmp_path, name, content):
    p = tmp_path / name
    p.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return p


# -- text files -------------------------------------------------------------------------------

def test_read_text_round_trips_utf8_and_drops_a_bom(tmp_path):
    assert read_text(write(tmp_path, "a.txt", CHINESE)) == CHINESE
    assert read_text(write(tmp_path, "b.txt", b"\xef\xbb\xbfhi")) == "hi"


def test_read_text_with_another_encoding(tmp_path):
    p = write(tmp_path, "latin.txt", "café\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not valid utf-8 text \(byte 0xe9 at offset 3\).*--encoding"):
        read_text(p)
    assert read_text(p, encoding="latin-1") == "café\n"
    # UTF-16 bytes are full of NULs but are text, not binary.
    assert read_text(write(tmp_path, "u16.txt", "hello".encode("utf-16")), encoding="utf-16") == "hello"


@pytest.mark.parametrize("make, pattern", [
    (lambda d: d / "missing.txt", r"file not found: .*missing\.txt; check the path"),
    (lambda d: d, r"is a directory; pass a file inside it"),
    (lambda d: write(d, "empty.txt", b""), r"empty\.txt is empty; pass a file with text in it"),
    (lambda d: write(d, "blank.txt", " \n\n"), r"is empty \(only whitespace\)"),
    (lambda d: write(d, "bin.dat", b"ab\x00\x01\x02cd"),
     r"looks like a binary file \(NUL character at position 2\).*--encoding"),
    (lambda d: write(d, "img.png", b"\x89PNG\r\n\x1a\n\x00"), r"not valid utf-8 text \(byte 0x89 at offset 0\)"),
])
def test_bad_text_files_are_one_line_data_errors(tmp_path, make, pattern):
    with pytest.raises(DataError, match=pattern) as info:
        read_text(make(tmp_path))
    assert "\n" not in str(info.value)


def test_unknown_encoding_name(tmp_path):
    with pytest.raises(DataError, match="unknown encoding 'klingon'"):
        read_text(write(tmp_path, "a.txt", "x"), encoding="klingon")


def test_require_length():
    require_length(10, 10, "the corpus")
    with pytest.raises(DataError, match=r"the validation split is too short: 3 tokens, but at least 9 are needed; "
                                        r"use more data, or a smaller --seq-len"):
        require_length(3, 9, "the validation split")


# -- vocabulary -------------------------------------------------------------------------------

def test_vocab_sorted_and_round_trips_chinese():
    text = CHINESE + "ROMEO: O, she doth teach the torches to burn bright!"
    vocab = Vocab.from_text(text)
    assert list(vocab.chars) == sorted(set(text))
    ids = vocab.encode(text)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    assert vocab.decode(ids) == text
    assert vocab.decode(ids.tolist()) == text
    assert vocab.encode("明月").tolist() == [vocab.chars.index("明"), vocab.chars.index("月")]
    assert Vocab.from_dict(vocab.to_dict()) == vocab
    assert vocab.decode([]) == "" and vocab.encode("").shape == (0,)


def test_vocab_round_trips_the_whole_corpus(shakespeare_path):
    text = read_text(shakespeare_path)
    vocab = Vocab.from_text(text)
    assert len(vocab) == 65
    assert vocab.decode(vocab.encode(text)) == text


def test_unknown_characters_are_named():
    vocab = Vocab.from_text("abc ")
    with pytest.raises(DataError, match=r"2 character\(s\) not in the model's vocabulary: 'Z', '月' "
                                        r"\(first at position 2\); use only characters the model was trained on"):
        vocab.encode("abZ月Z")


def test_vocab_rejects_bad_input():
    with pytest.raises(DataError, match="empty text"):
        Vocab.from_text("")
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 3\)"):
        Vocab.from_text("abc").decode([0, 3])
    with pytest.raises(CheckpointError, match="vocabulary is malformed"):
        Vocab.from_dict({"kind": "char", "chars": ["a", "a"]})
    with pytest.raises(CheckpointError, match="vocabulary is malformed"):
        Vocab.from_dict({"chars": ["a"]})


# -- splits -----------------------------------------------------------------------------------

def test_split_ids_is_contiguous_and_in_order():
    ids = np.arange(100, dtype=np.int32)
    train, val, test = split_ids(ids, val_frac=0.1, test_frac=0.2)
    assert (len(train), len(val), len(test)) == (70, 10, 20)
    assert np.array_equal(np.concatenate([train, val, test]), ids)
    train, val, test = split_ids(ids)
    assert (len(train), len(val), len(test)) == (90, 10, 0)


def test_chronological_split_forms():
    assert chronological_split(10, 0.2, 0.1) == (slice(0, 7), slice(7, 9), slice(9, 10))
    X, Y = np.arange(20).reshape(10, 2), np.arange(10)
    (Xtr, Ytr), (Xv, Yv), (Xte, Yte) = chronological_split((X, Y), 0.2, 0.1)
    assert np.array_equal(Xtr, X[:7]) and np.array_equal(Yv, Y[7:9]) and np.array_equal(Xte, X[9:])
    # Every training item comes before every validation item, which comes before every test item.
    assert Ytr.max() < Yv.min() and Yv.max() < Yte.min()
    with pytest.raises(ValueError, match="same length"):
        chronological_split((X, Y[:5]))
    with pytest.raises(ValueError, match="sum below 1"):
        chronological_split(10, 0.6, 0.5)


# -- the truncated-BPTT batcher ---------------------------------------------------------------

def test_batcher_streams_are_contiguous_across_batches():
    ids = np.arange(1000, dtype=np.int32)  # token value == position, so continuity is visible
    B, T = 4, 7
    batcher = StreamBatcher(ids, batch_size=B, seq_len=T)
    stream_len = 1000 // B
    assert batcher.batches_per_epoch == (stream_len - 1) // T
    prev = None
    for _ in range(batcher.batches_per_epoch):
        x, y = batcher.next_batch()
        assert x.shape == y.shape == (T, B) and x.dtype == y.dtype == np.int32
        assert np.array_equal(y, x + 1)  # y is x one step ahead
        assert np.array_equal(x[:, 1] - x[:, 0], np.full(T, stream_len))  # stream b starts at b * stream_len
        if prev is not None:
            assert np.array_equal(x[0], prev[-1] + 1)  # each stream continues where it stopped
        prev = x
    assert batcher.epoch == 1 and batcher.batch_in_epoch == 0
    x, _ = batcher.next_batch()  # wrapped to the start
    assert np.array_equal(x[:, 0], np.arange(T))


def test_batcher_continuity_on_real_text(shakespeare_path):
    vocab_text = read_text(shakespeare_path)[:20_000]
    vocab = Vocab.from_text(vocab_text)
    batcher = StreamBatcher(vocab.encode(vocab_text), batch_size=8, seq_len=32)
    x0, y0 = batcher.next_batch()
    x1, _ = batcher.next_batch()
    stream_len = len(vocab_text) // 8
    for b in range(8):
        start = b * stream_len
        assert vocab.decode(np.concatenate([x0[:, b], x1[:, b]])) == vocab_text[start : start + 64]
        assert x1[0, b] == y0[-1, b]


def test_batcher_resume_gives_identical_batches():
    ids = np.random.default_rng(0).integers(0, 50, size=5000).astype(np.int32)
    straight = StreamBatcher(ids, 8, 16)
    for _ in range(30):  # past an epoch boundary (38 batches per epoch) only after resuming
        straight.next_batch()
    saved = straight.state_dict()
    expected = [straight.next_batch() for _ in range(20)]
    resumed = StreamBatcher(ids, 8, 16)
    resumed.load_state_dict(saved)
    got = [resumed.next_batch() for _ in range(20)]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(expected, got))
    assert resumed.state_dict() == straight.state_dict() and resumed.epoch == 1


def test_batcher_rejects_too_short_a_corpus_and_a_changed_one():
    with pytest.raises(DataError, match=r"the token stream is too short: 100 tokens, but at least 330 are needed; "
                                        r"it must hold batch_size x \(seq_len \+ 1\) = 10 x 33"):
        StreamBatcher(np.zeros(100, np.int32), batch_size=10, seq_len=32)
    StreamBatcher(np.zeros(330, np.int32), batch_size=10, seq_len=32)  # exactly one batch fits
    state = StreamBatcher(np.zeros(500, np.int32), 4, 8).state_dict()
    with pytest.raises(CheckpointError, match="resume with the same corpus"):
        StreamBatcher(np.zeros(600, np.int32), 4, 8).load_state_dict(state)


# -- CSV and TSV ------------------------------------------------------------------------------

def test_load_csv_column_by_name_and_index(tmp_path):
    p = write(tmp_path, "s.csv", "date,temp,rain\n2020-01-01, 1.5,0\n\n2020-01-02,-2e1,1\n")
    assert load_csv_column(p, "temp").tolist() == [1.5, -20.0]
    assert load_csv_column(p, 2).dtype == np.float64
    assert load_csv_column(p, -1).tolist() == [0.0, 1.0]
    headerless = write(tmp_path, "h.csv", "1;2\n3;4\n")
    assert load_csv_column(headerless, 1, header=False, delimiter=";").tolist() == [2.0, 4.0]
    semicolons = write(tmp_path, "eu.csv", "day;value\n1;10\n2;20\n")
    assert load_csv_column(semicolons, "value").tolist() == [10.0, 20.0]


def test_csv_bad_input(tmp_path):
    p = write(tmp_path, "s.csv", "date,temp\n2020,1\n2021,n/a\n")
    with pytest.raises(DataError, match=r"has no column 'tmp'; its columns are 0: 'date', 1: 'temp'; pass one"):
        load_csv_column(p, "tmp")
    with pytest.raises(DataError, match=r"has no column 5"):
        load_csv_column(p, 5)
    with pytest.raises(DataError, match=r"s\.csv line 3, column 'temp': 'n/a' is not a number"):
        load_csv_column(p, "temp")
    with pytest.raises(DataError, match=r"line 2, column 'v': 'inf' is not a finite number"):
        load_csv_column(write(tmp_path, "inf.csv", "v\ninf\n"), "v")
    with pytest.raises(DataError, match=r"line 3, column 'v': '' is not a number"):
        load_csv_column(write(tmp_path, "gap.csv", "k,v\n1,2\n2,\n"), "v")
    with pytest.raises(DataError, match=r"line 3 has 1 fields, so no column 'v'"):
        load_csv_column(write(tmp_path, "short.csv", "k,v\n1,2\n2\n"), "v")
    with pytest.raises(DataError, match="header but no data rows"):
        load_csv_column(write(tmp_path, "head.csv", "k,v\n"), "v")
    with pytest.raises(DataError, match="file not found"):
        load_csv_column(tmp_path / "nope.csv", "v")


def test_load_text_labels_csv_and_tsv(tmp_path):
    csv_path = write(tmp_path, "reviews.csv", 'text,label\n"Great, loved it; really",pos\nawful,neg\nmeh; fine,pos\n')
    texts, labels, names = load_text_labels(csv_path)
    assert texts == ["Great, loved it; really", "awful", "meh; fine"]
    assert names == ["neg", "pos"] and labels.tolist() == [1, 0, 1] and labels.dtype == np.int32
    tsv_path = write(tmp_path, "r.tsv", "sentence\tstars\n好看, 很好\t10\nbad\t2\nok\t2\n")
    texts, labels, names = load_text_labels(tsv_path, "sentence", "stars")
    assert texts[0] == "好看, 很好" and names == ["2", "10"] and labels.tolist() == [1, 0, 0]


def test_text_labels_bad_input(tmp_path):
    p = write(tmp_path, "r.csv", "review,label\nhi,pos\nho,neg\n")
    with pytest.raises(DataError, match=r"has no column 'text'; its columns are 0: 'review', 1: 'label'"):
        load_text_labels(p)
    with pytest.raises(DataError, match="has no column 'sentiment'"):
        load_text_labels(p, "review", "sentiment")
    with pytest.raises(DataError, match="line 3 has an empty label"):
        load_text_labels(write(tmp_path, "e.csv", "text,label\nhi,pos\nho,\n"))
    with pytest.raises(DataError, match="only the label 'pos'; a classifier needs at least two classes"):
        load_text_labels(write(tmp_path, "one.csv", "text,label\nhi,pos\nho,pos\n"))


# -- scalers and windows ----------------------------------------------------------------------

@pytest.mark.parametrize("cls", [MinMaxScaler, StandardScaler])
def test_scalers_invert_and_serialise(cls):
    x = np.random.default_rng(1).normal(5.0, 3.0, size=200)
    scaler = cls()
    z = scaler.fit_transform(x)
    if cls is MinMaxScaler:
        assert z.min() == 0.0 and z.max() == 1.0
    else:
        assert abs(z.mean()) < 1e-12 and abs(z.std() - 1) < 1e-12
    np.testing.assert_allclose(scaler.inverse_transform(z), x, rtol=1e-12)
    again = Scaler.from_dict(scaler.to_dict())
    assert type(again) is cls
    np.testing.assert_array_equal(again.transform(x), z)
    assert np.all(cls().fit(np.full(5, 2.0)).transform(np.full(5, 2.0)) == 0)  # constant series: no 0/0


def test_scaler_misuse():
    with pytest.raises(RuntimeError, match="not fitted; call fit"):
        MinMaxScaler().transform([1.0])
    with pytest.raises(CheckpointError, match="scaler is malformed"):
        MinMaxScaler.from_dict(StandardScaler().fit([1.0, 2.0]).to_dict())


def test_sliding_windows_shapes_and_values():
    series = np.arange(10.0)
    X, Y = sliding_windows(series, window=3, horizon=2)
    assert X.shape == (6, 3) and Y.shape == (6, 2)
    assert X[0].tolist() == [0, 1, 2] and Y[0].tolist() == [3, 4]
    assert X[-1].tolist() == [5, 6, 7] and Y[-1].tolist() == [8, 9]
    assert sliding_windows(series, 9, 1)[0].shape == (1, 9)
    with pytest.raises(DataError, match=r"the series is too short: 10 values, but at least 11 are needed; .*--window"):
        sliding_windows(series, 9, 2)


def test_forecast_windows_do_not_leak():
    series = np.arange(100.0)
    scaler = MinMaxScaler()
    parts = forecast_windows(series, window=5, horizon=3, val_frac=0.2, test_frac=0.1, scaler=scaler)
    # The scaler saw only the training part (the first 70 values).
    assert scaler.offset == 0.0 and scaler.scale == 69.0
    targets = {name: scaler.inverse_transform(Y).round().astype(int) for name, (X, Y) in parts.items()}
    assert targets["train"].max() < 70 <= targets["val"].min()
    assert targets["val"].max() < 90 <= targets["test"].min()
    assert targets["test"].max() == 99
    # Validation inputs are the values just before each target, reaching back into the training part.
    X_val, Y_val = parts["val"]
    assert np.array_equal(scaler.inverse_transform(X_val[0]).round(), np.arange(65.0, 70.0))
    assert len(X_val) == 20 - 3 + 1
    assert parts["test"][0].shape == (10 - 3 + 1, 5)
    assert forecast_windows(series, 5, 3, val_frac=0.0)["val"][0].shape == (0, 5)


def test_forecast_windows_too_short():
    with pytest.raises(DataError, match=r"the training part of the series is too short: 8 values, but at least 11"):
        forecast_windows(np.arange(10.0), window=8, horizon=3, val_frac=0.2)
    with pytest.raises(DataError, match=r"the val part of the series is too short: 2 values, but at least 3"):
        forecast_windows(np.arange(20.0), window=4, horizon=3, val_frac=0.1)
