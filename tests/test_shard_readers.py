"""The weight shards read as they are with polars, pyarrow.dataset, DuckDB and `datasets`: the same
rows, the same list values and the same column types as the Parquet files hold."""

from __future__ import annotations

import glob

import datasets
import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from helpers import DESIGN_COLUMNS
from weight_shards_fixture import weight_shards_fixture  # noqa: F401  (the weight_shards fixture)

EXPECTED = pa.schema(DESIGN_COLUMNS)


def _shards(directory) -> list[str]:
    return sorted(glob.glob(f"{directory}/part-*.parquet"))


def _polars(directory, tmp_path) -> pa.Table:
    return pl.read_parquet(f"{directory}/part-*.parquet").to_arrow()


def _pyarrow_dataset(directory, tmp_path) -> pa.Table:
    return pads.dataset(_shards(directory), format="parquet").to_table()


def _duckdb(directory, tmp_path) -> pa.Table:
    return duckdb.sql(f"select * from read_parquet('{directory}/part-*.parquet')").to_arrow_table()


def _datasets(directory, tmp_path) -> pa.Table:
    ds = datasets.load_dataset("parquet", data_files=_shards(directory), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    return ds.data.table


READERS = {"polars": _polars, "pyarrow.dataset": _pyarrow_dataset, "duckdb": _duckdb, "datasets": _datasets}


def _plain(t: pa.DataType) -> pa.DataType:
    """The type with large/view variants made plain (polars and DuckDB choose those for strings and
    lists), so that types compare by what they hold."""
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t) or pa.types.is_large_list_view(t):
        return pa.list_(_plain(t.value_type))
    return t


def _sorted_rows(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def reference(weight_shards):
    """The shards as pyarrow.parquet reads them, file by file."""
    table = pa.concat_tables(pq.read_table(p) for p in _shards(weight_shards))
    assert table.num_rows == 24 and table.schema.remove_metadata().equals(EXPECTED)
    return table


@pytest.mark.parametrize("reader", READERS)
def test_every_reader_returns_the_same_rows_and_types(reader, weight_shards, reference, tmp_path):
    table = READERS[reader](weight_shards, tmp_path)
    assert table.column_names == EXPECTED.names
    assert pa.schema([(f.name, _plain(f.type)) for f in table.schema]).equals(EXPECTED), table.schema
    rows, expected = _sorted_rows(table), _sorted_rows(reference)
    assert [r["id"] for r in rows] == [r["id"] for r in expected]
    for got, want in zip(rows, expected):
        for name in EXPECTED.names:  # lists compare exactly: the same float32 values, not approximately
            assert got[name] == want[name], (reader, want["id"], name)


def test_native_types_of_each_reader(weight_shards, tmp_path):
    """What each library calls the columns, as a user sees them."""
    df = pl.read_parquet(f"{weight_shards}/part-*.parquet")
    assert df.schema["input_ids"] == pl.List(pl.Int32) and df.schema["loss_mask"] == pl.List(pl.Int8)
    assert df.schema["weight"] == pl.List(pl.Float32) and df.schema["offsets"] == pl.List(pl.List(pl.Int32))
    rel = duckdb.sql(f"select * from read_parquet('{weight_shards}/part-*.parquet')")
    types = dict(zip(rel.columns, map(str, rel.types)))
    assert types["input_ids"] == "INTEGER[]" and types["token_class"] == "TINYINT[]"
    assert types["loss_base"] == "FLOAT[]" and types["offsets"] == "INTEGER[][]" and types["id"] == "VARCHAR"
    ds = datasets.load_dataset("parquet", data_files=_shards(weight_shards), split="train",
                               cache_dir=str(tmp_path / "hf-cache"))
    assert ds.features["input_ids"] == datasets.List(datasets.Value("int32"))
    assert ds.features["weight"] == datasets.List(datasets.Value("float32"))
    assert ds.features["offsets"] == datasets.List(datasets.List(datasets.Value("int32")))


def test_the_directory_holds_more_than_shards(weight_shards):
    """Why the docs say `part-*.parquet`: a reader given the bare directory meets the JSON beside
    the shards."""
    assert {"_manifest.json", "summary.json"} <= {p.name for p in weight_shards.iterdir()}
    with pytest.raises(pa.ArrowInvalid):
        pads.dataset(str(weight_shards), format="parquet").to_table()
