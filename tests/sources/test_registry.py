"""Every source kind the config accepts can be read and fingerprinted; nothing else can."""

import typing

import pytest

from tokenweight.config import Source, SyntheticSource
from tokenweight.sources.registry import SOURCES, PrepareError, read_source, source_fingerprint


def test_every_source_kind_of_the_config_has_a_reader_and_a_fingerprint():
    union = typing.get_args(typing.get_args(Source)[0])
    assert union and set(union) == set(SOURCES)


def test_a_source_kind_without_an_entry_is_an_error_not_an_empty_fingerprint():
    class NewSource(SyntheticSource):
        pass

    with pytest.raises(PrepareError, match="no entry in tokenweight/sources/registry.py"):
        source_fingerprint(NewSource())
    with pytest.raises(PrepareError, match="no entry"):
        read_source(NewSource())


def test_the_synthetic_source_is_fingerprinted_by_its_generator():
    fingerprint = source_fingerprint(SyntheticSource())
    assert set(fingerprint["code"]) == {"synthetic", "tools_text"}
    assert fingerprint == source_fingerprint(SyntheticSource(n=3, seed=9))  # the settings are in the key already
