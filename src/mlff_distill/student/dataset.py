"""Training data as blocks of structures, so that a label store larger than memory trains.

A `StructureBlocks` dataset is one split of the label store cut into blocks of consecutive
structures whose atoms fill about one chunk of the store's per-atom arrays, so each block is read
with few chunk reads. A split smaller than a size threshold is instead held in memory as a single
block. `BlockSampler` orders the blocks (shuffled per epoch) and `shuffled_batches` mixes the
structures of a bounded buffer of blocks into batches. Units as in the store: Angstrom, eV,
eV/Angstrom, eV/Angstrom^3.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from mlff_distill.data import LabeledArrays
from mlff_distill.store import SPLIT_CODES, read_labels, read_structure_table, read_structures

# In-memory bytes per atom (numbers int64, positions and forces float64; the Hessian direction
# and product, float64, where the store has them) and per structure (energy, stress, cell, pbc, offset).
BYTES_PER_ATOM = 8 + 24 + 24
BYTES_PER_ATOM_HESSIAN = 24 + 24
BYTES_PER_STRUCTURE = 8 + 72 + 72 + 3 + 8


def concatenate(parts: Sequence[LabeledArrays]) -> LabeledArrays:
    """The structures of ``parts``, in order, as one `LabeledArrays`."""
    if not parts:
        raise ValueError("concatenate needs at least one LabeledArrays")
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [part.atoms_ptr[-1] for part in parts[:-1]])
    with_stress = all(part.stress_eV_per_A3 is not None for part in parts)
    with_hessian = all(part.has_hessian for part in parts)
    return LabeledArrays(
        numbers=np.concatenate([part.numbers for part in parts]),
        positions_A=np.concatenate([part.positions_A for part in parts]),
        forces_eV_per_A=np.concatenate([part.forces_eV_per_A for part in parts]),
        energy_eV=np.concatenate([part.energy_eV for part in parts]),
        atoms_ptr=np.concatenate([[0]] + [part.atoms_ptr[1:] + offset for part, offset in zip(parts, offsets)]),
        cell_A=np.concatenate([part.cell_A for part in parts]),
        pbc=np.concatenate([part.pbc for part in parts]),
        stress_eV_per_A3=np.concatenate([part.stress_eV_per_A3 for part in parts]) if with_stress else None,
        hessian_direction=np.concatenate([part.hessian_direction for part in parts]) if with_hessian else None,
        hessian_product_eV_per_A2=(
            np.concatenate([part.hessian_product_eV_per_A2 for part in parts]) if with_hessian else None
        ),
        sample_index=(
            np.concatenate([part.sample_index for part in parts])
            if all(part.sample_index is not None for part in parts)
            else None
        ),
    )


class StructureBlocks(torch.utils.data.Dataset):
    """Blocks of structures of one split; ``dataset[i]`` is block ``i`` as `LabeledArrays`.

    Build with `in_memory` (one block) or `from_store`.
    """

    def __init__(
        self,
        n_structures: int,
        data: Optional[LabeledArrays] = None,
        store_path: Optional[Path] = None,
        split: Optional[str] = None,
        ranges: Sequence[tuple[int, int]] = (),
    ) -> None:
        self.n_structures = n_structures
        self._data, self._store_path, self._split, self._ranges = data, store_path, split, list(ranges)

    @classmethod
    def in_memory(cls, data: LabeledArrays) -> "StructureBlocks":
        """All of ``data`` as one block."""
        return cls(data.n_structures, data=data)

    @classmethod
    def from_store(
        cls, store_path: Union[str, Path], split: str, max_in_memory_bytes: float, block_atoms: Optional[int] = None
    ) -> "StructureBlocks":
        """Split ``split`` of the store: in memory if it takes at most ``max_in_memory_bytes``,
        else read block by block, each block holding the structures whose first atom lies in one
        stretch of ``block_atoms`` atoms (default: the chunk length of the per-atom arrays).
        """
        if split not in SPLIT_CODES:
            raise ValueError(f"split {split!r} is not one of {sorted(SPLIT_CODES)}")
        table = read_structure_table(Path(store_path))
        ptr, chosen = table["atoms_ptr"], table["split"] == SPLIT_CODES[split]
        n_structures = int(chosen.sum())
        per_atom = BYTES_PER_ATOM + (BYTES_PER_ATOM_HESSIAN if table["has_hessian"] else 0)
        size = int(np.diff(ptr)[chosen].sum()) * per_atom + n_structures * BYTES_PER_STRUCTURE
        if size <= max_in_memory_bytes:
            return cls.in_memory(read_labels(Path(store_path), split))
        block_atoms = int(block_atoms or table["atom_chunk_rows"])
        if block_atoms < 1:
            raise ValueError(f"block_atoms must be >= 1, got {block_atoms}")
        starts = np.searchsorted(ptr[:-1], np.arange(0, ptr[-1], block_atoms))
        bounds = np.unique(np.concatenate([[0], starts, [len(ptr) - 1]]))
        ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if chosen[a:b].any()]
        return cls(n_structures, store_path=Path(store_path), split=split, ranges=ranges)

    @property
    def in_memory_data(self) -> Optional[LabeledArrays]:
        """The whole split if it is held in memory, else ``None``."""
        return self._data

    def __len__(self) -> int:
        return 1 if self._data is not None else len(self._ranges)

    def __getitem__(self, index: int) -> LabeledArrays:
        if self._data is not None:
            if index not in (0, -1):
                raise IndexError(f"block {index} out of range: an in-memory dataset has one block")
            return self._data
        start, stop = self._ranges[index]
        return read_structures(self._store_path, start, stop, self._split)

    def blocks(self) -> Iterator[LabeledArrays]:
        """All blocks in store order."""
        for index in range(len(self)):
            yield self[index]


class BlockSampler(torch.utils.data.Sampler):
    """Block indices of a `StructureBlocks`, shuffled with ``generator`` (in order without one)."""

    def __init__(self, dataset: StructureBlocks, generator: Optional[torch.Generator] = None) -> None:
        self.n_blocks, self.generator = len(dataset), generator

    def __len__(self) -> int:
        return self.n_blocks

    def __iter__(self) -> Iterator[int]:
        if self.generator is None or self.n_blocks == 1:
            return iter(range(self.n_blocks))
        return iter(torch.randperm(self.n_blocks, generator=self.generator).tolist())


def batches_in_epoch(n_structures: int, batch_size: int) -> int:
    """How many batches `shuffled_batches` cuts ``n_structures`` into."""
    return max(1, n_structures // batch_size) if n_structures else 0


def shuffled_batches(
    dataset: StructureBlocks,
    batch_size: int,
    generator: torch.Generator,
    buffer_blocks: int,
    keep: Optional[Callable[[int], bool]] = None,
) -> Iterator[LabeledArrays]:
    """One epoch of `batches_in_epoch` batches of ``batch_size`` structures, the last one larger
    where the structures do not divide evenly: a short last batch joins the one before it, because
    the compiled loss specialises on a batch of 1 structure (where Inductor fails) or of 3 (the size
    of a coordinate axis) and would compile again.

    With ``keep``, only the batches whose number ``i`` (from 0, in epoch order) has ``keep(i)`` are
    assembled and yielded; the others are drawn alike (the same random numbers) but skipped.

    Blocks come in `BlockSampler` order; ``buffer_blocks`` of them at a time are pooled with the
    structures left over from the previous pool, shuffled, and cut into batches, so at most about
    ``buffer_blocks + 1`` blocks are in memory. With one block this is a plain shuffle of it.
    """
    if batch_size < 1 or buffer_blocks < 1:
        raise ValueError(f"batch_size and buffer_blocks must be >= 1, got {batch_size}, {buffer_blocks}")
    held: list[tuple[LabeledArrays, torch.Tensor]] = []  # the latest batch (and a short last one)
    number = 0
    for pool, indices in _cut_into_batches(dataset, batch_size, generator, buffer_blocks):
        if held and len(indices) == batch_size:  # so the held batch is not the last
            if keep is None or keep(number):
                yield concatenate([part.subset(chosen.tolist()) for part, chosen in held])
            held, number = [], number + 1
        held.append((pool, indices))
    if held and (keep is None or keep(number)):
        yield concatenate([part.subset(chosen.tolist()) for part, chosen in held])


def _cut_into_batches(
    dataset: StructureBlocks, batch_size: int, generator: torch.Generator, buffer_blocks: int
) -> Iterator[tuple[LabeledArrays, torch.Tensor]]:
    """The pools of `shuffled_batches` and the indices of each batch in its pool; only the last
    batch may be short."""
    order = list(BlockSampler(dataset, generator))
    leftover: list[LabeledArrays] = []
    for first in range(0, len(order), buffer_blocks):
        pool = concatenate(leftover + [dataset[i] for i in order[first : first + buffer_blocks]])
        batches = torch.randperm(pool.n_structures, generator=generator).split(batch_size)
        last_pool = first + buffer_blocks >= len(order)
        if not last_pool and batches and len(batches[-1]) < batch_size:
            leftover, batches = [pool.subset(batches[-1].tolist())], batches[:-1]
        else:
            leftover = []
        for indices in batches:
            yield pool, indices
