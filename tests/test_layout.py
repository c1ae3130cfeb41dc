"""Layouts: the seed's disk, the lab disk, alignment and bad input."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from labkit.core.errors import InputError
from labkit.core.layout import ALIGN, LAB_LAYOUT, SEED_LAYOUT, GiB, MiB, Role, parse_size


def test_seed_layout_matches_the_post() -> None:
    ex = SEED_LAYOUT.extents()
    assert [e.partition.type_code for e in ex] == ["ef00", "8300", "8300", "8300", "8300"]
    assert [e.partition.fs.value for e in ex] == ["vfat", "ext4", "ext4", "ext4", "ext4"]
    # Alpine is sda4 in the post (its LBU media)
    assert SEED_LAYOUT.extent(Role.ALPINE).number == 4
    assert ex[-1].end <= 120_000_000_000 - 33 * 512


@pytest.mark.parametrize("layout", [SEED_LAYOUT, LAB_LAYOUT])
def test_extents_are_aligned_and_contiguous(layout) -> None:  # type: ignore[no-untyped-def]
    ex = layout.extents()
    assert ex[0].start == ALIGN
    for a, b in itertools.pairwise(ex):
        assert a.end == b.start
    for e in ex:
        assert e.start % ALIGN == 0 and e.size % ALIGN == 0
        assert e.partition.block_size == 4096


def test_lab_layout_is_small() -> None:
    assert LAB_LAYOUT.disk_size <= 4 * GiB
    assert LAB_LAYOUT.extent(Role.DATA).size > 0


def test_disk_too_small_is_refused() -> None:
    with pytest.raises(InputError, match="needs at least"):
        LAB_LAYOUT.extents(512 * MiB)


def test_bad_partitions_are_refused() -> None:
    esp = LAB_LAYOUT.partitions[0]
    with pytest.raises(InputError, match="multiple of 1 MiB"):
        dataclasses.replace(LAB_LAYOUT, partitions=(dataclasses.replace(esp, size=1000),))
    with pytest.raises(InputError, match="4 KiB"):
        bad = dataclasses.replace(LAB_LAYOUT.partitions[3], block_size=1024)
        dataclasses.replace(LAB_LAYOUT, partitions=(esp, bad))
    with pytest.raises(InputError, match="only the last"):
        nosize = dataclasses.replace(LAB_LAYOUT.partitions[1], size=None)
        dataclasses.replace(LAB_LAYOUT, partitions=(esp, nosize, LAB_LAYOUT.partitions[2]))


def test_with_sizes() -> None:
    bigger = SEED_LAYOUT.with_sizes(nix_store=60 * GiB)
    assert bigger.partition(Role.NIX_STORE).size == 60 * GiB
    with pytest.raises(InputError, match="unknown partition"):
        SEED_LAYOUT.with_sizes(swap=GiB)


@pytest.mark.parametrize(
    ("text", "value"),
    [("512M", 512 * MiB), ("2G", 2 * GiB), ("120GB", 120_000_000_000), ("4096", 4096), ("1.5GiB", 3 * GiB // 2)],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "abc", "-1G", "0"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(InputError):
        parse_size(text)
