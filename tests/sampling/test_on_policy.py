"""The student's MD of an on-policy round, with ASE's EMT as the student: frames kept, the frames
before a blow-up, and the bookkeeping of groups, splits and sample indices."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from mlff_distill.contacts import closest_contacts_A
from mlff_distill.sampling.on_policy import ContactBounds, blowup_spacing, explore, replicated
from mlff_distill.settings import OnPolicySettings, section_settings


def on_policy(**overrides) -> OnPolicySettings:
    values = {"starts": 2, "steps": 60, "frame_every": 20, "timestep_fs": 2.0, "replicate": 2}
    return section_settings(OnPolicySettings, "on_policy", {**values, **overrides})


def copper():
    """The cubic Cu cell (4 atoms), each atom tagged as a molecule of its own."""
    atoms = bulk("Cu", cubic=True)
    atoms.arrays["molecule_index"] = np.arange(len(atoms))
    return atoms


class BlowsUpAfter(EMT):
    """EMT whose ``calls``-th calculation and later ones give a force of 50 eV/A on atom 0
    (``mode="force"``) or NaN forces (``mode="nan"``)."""

    def __init__(self, calls: int, mode: str = "force"):
        super().__init__()
        self.calls, self.mode, self.done = calls, mode, 0

    def calculate(self, atoms=None, properties=("energy", "forces"), system_changes=None):
        super().calculate(atoms, properties, system_changes)
        self.done += 1
        if self.done >= self.calls:
            forces = self.results["forces"].copy()
            if self.mode == "nan":
                forces[:] = np.nan
            else:
                forces[0] = [50.0, 0.0, 0.0]
            self.results["forces"] = forces


def test_runs_keep_frames_with_consistent_groups_splits_and_indices():
    settings = on_policy()
    starts = [("cu", 300.0, copper()), ("cu-hot", 900.0, copper())]
    structures, stats = explore(EMT(), starts, settings, 7, 2, 1000, 50, val_fraction=0.25)

    assert {k: stats[k] for k in ("n_runs", "n_steps", "n_frames", "n_blowups")} == {
        "n_runs": 4,
        "n_steps": 240,
        "n_frames": 12,
        "n_blowups": 0,
    }
    assert stats["blowups"] == [] and stats["n_frames_before_blowup"] == 0
    assert [a.info["sample_index"] for a in structures] == list(range(1000, 1012))
    assert [a.info["group"] for a in structures] == [g for g in range(50, 54) for _ in range(3)]
    assert [a.info["md_step"] for a in structures] == [20, 40, 60] * 4
    assert [a.info["target"] for a in structures] == ["cu"] * 6 + ["cu-hot"] * 6
    assert [a.info["temperature_K"] for a in structures] == [300.0] * 6 + [900.0] * 6
    split_of_group = {a.info["group"]: a.info["split"] for a in structures}
    assert all(a.info["split"] == split_of_group[a.info["group"]] for a in structures)
    assert sorted(split_of_group.values()) == ["train", "train", "train", "val"]  # round(0.25 * 4) groups
    for atoms in structures:
        assert atoms.calc is None and not atoms.constraints
        assert atoms.info["strategy"] == "on-policy" and atoms.info["round"] == 2
        assert atoms.info["seed"] == atoms.info["target"]
        assert atoms.info["before_blowup"] is False
        assert len(atoms) == 32 and atoms.pbc.all()  # repeated 2 x 2 x 2
        assert sorted(atoms.arrays["molecule_index"]) == list(range(32))  # unique per molecule after the repeat
    moved = [np.abs(a.positions - replicated(copper(), 2).positions).max() for a in structures]
    assert min(moved) > 0.01
    assert np.abs(structures[0].positions - structures[3].positions).max() > 1e-3  # runs differ

    again, _ = explore(EMT(), starts, settings, 7, 2, 1000, 50, val_fraction=0.25)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(structures, again))
    other, _ = explore(EMT(), starts, settings, 8, 2, 1000, 50, val_fraction=0.25)
    assert not np.array_equal(other[0].positions, structures[0].positions)


# The calculator's first call is the start's forces; the n-th call is step n - 1's.
@pytest.mark.parametrize(
    ("blowup_step", "mode", "reason", "before"),
    [
        (97, "force", "force of 37.5 eV/A", [84, 90, 96]),  # 50 eV/A less the mean force (FixCom)
        (81, "nan", "non-finite", [62, 68, 74]),  # step 80 is kept anyway: not counted twice
    ],
)
def test_blow_up_stops_the_run_and_keeps_the_frames_before_it(blowup_step, mode, reason, before):
    settings = on_policy(starts=1, steps=200, frames_before_blowup=3, replicate=1)
    assert blowup_spacing(settings) == 6
    calculator = BlowsUpAfter(calls=blowup_step + 1, mode=mode)
    structures, stats = explore(calculator, [("cu", 300.0, copper())], settings, 0, 1, 0, 0, val_fraction=0.0)

    assert calculator.done == blowup_step + 1  # the run stopped at the blow-up
    assert stats["n_blowups"] == 1 and stats["n_steps"] == blowup_step
    (blowup,) = stats["blowups"]
    assert reason in blowup["reason"]
    assert blowup["step"] == blowup_step and blowup["target"] == "cu" and blowup["temperature_K"] == 300.0
    assert blowup["time_ps"] == pytest.approx(blowup_step * 2.0e-3)
    steps = [a.info["md_step"] for a in structures]
    assert steps == sorted([20, 40, 60, 80] + before)
    assert [a.info["md_step"] for a in structures if a.info["before_blowup"]] == before
    assert stats["n_frames"] == 4 + len(before) and stats["n_frames_before_blowup"] == len(before)
    assert [a.info["sample_index"] for a in structures] == list(range(len(structures)))
    assert all(a.info["split"] == "train" for a in structures)
    assert all(np.isfinite(a.positions).all() and a.calc is None for a in structures)


def test_atoms_too_close_is_a_blow_up_at_the_first_step():
    """Cu neighbours are 2.55 A apart: a closest distance of 3 A stops every run at once."""
    settings = on_policy(starts=1, frames_before_blowup=2, min_distance_A=3.0, replicate=1)
    structures, stats = explore(EMT(), [("cu", 300.0, copper())], settings, 0, 1, 0, 0, val_fraction=0.0)
    assert structures == [] and stats["n_steps"] == 1
    assert stats["blowups"][0]["reason"].startswith("atoms 2.5") and stats["blowups"][0]["reason"].endswith("A apart")


def test_val_fraction_outside_its_range_is_refused():
    with pytest.raises(ValueError, match="val_fraction"):
        explore(EMT(), [("cu", 300.0, copper())], on_policy(), 0, 1, 0, 0, val_fraction=1.0)


def water_pair(separation_A: float):
    """Two water molecules, the second shifted by ``separation_A`` along x: O-O at that distance."""
    first, second = molecule("H2O"), molecule("H2O")
    second.positions[:, 0] += separation_A
    return first + second


def test_closest_contacts_are_the_shortest_distance_of_each_pair_of_elements():
    closest = closest_contacts_A([water_pair(3.0), water_pair(2.6)], 4.0)
    assert set(closest) == {(1, 1), (1, 8), (8, 8)}
    assert closest[(8, 8)] == pytest.approx(2.6)
    assert closest[(1, 8)] == pytest.approx(np.linalg.norm(molecule("H2O").get_distance(0, 1)))
    assert (8, 8) not in closest_contacts_A([water_pair(5.0)], 4.0)


def test_a_pair_much_closer_than_in_the_labels_is_a_blow_up_unless_the_start_was_as_close():
    bounds = ContactBounds(closest_contacts_A([water_pair(2.6)], 4.0), 0.8)
    assert bounds.violation(water_pair(2.2)) is None  # above 0.8 x 2.6 A
    reason = bounds.violation(water_pair(1.9))
    assert reason.startswith("O-O 1.90 A apart") and "(2.60 A)" in reason
    from_close_start = bounds.for_start(water_pair(1.9))
    assert from_close_start.violation(water_pair(1.9)) is None
    assert from_close_start.violation(water_pair(1.4)).startswith("O-O 1.40 A apart")


def test_a_run_that_brings_atoms_closer_than_the_labels_stops_there():
    """Labels whose closest Cu-Cu pair is the start's (fraction 1): the first thermal step that brings
    two neighbours closer is a blow-up, with frames kept from before it."""
    contacts = ContactBounds(closest_contacts_A([copper()], 4.0), 1.0)
    settings = on_policy(starts=1, replicate=1, frames_before_blowup=2)
    structures, stats = explore(EMT(), [("cu", 300.0, copper())], settings, 0, 1, 0, 0, 0.0, contacts)
    (blowup,) = stats["blowups"]
    assert blowup["reason"].startswith("Cu-Cu ") and blowup["step"] < settings.steps
    assert structures == [] or all(a.info["md_step"] < blowup["step"] for a in structures)


def test_runs_shared_among_processes_give_what_one_process_gives():
    starts = [("cu", 300.0, copper()), ("cu", 600.0, copper())]
    settings = on_policy(starts=2, steps=30, frame_every=10)
    alone, stats_alone = explore(EMT(), starts, settings, 3, 1, 0, 0, val_fraction=0.25)
    shared, stats_shared = explore(EMT, starts, settings, 3, 1, 0, 0, val_fraction=0.25, processes=2)
    assert stats_shared == stats_alone and len(shared) == len(alone) == 4 * 3
    for a, b in zip(alone, shared):
        assert a.info == b.info
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-10)
