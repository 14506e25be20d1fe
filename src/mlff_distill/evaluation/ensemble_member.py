"""The cheapest alternative to a student for an ensemble teacher: one of its members.

An ensemble teacher (the ANI-1x ensemble: eight networks) labels with the mean of its members; a
user who finds the ensemble too slow could run one member instead, without training anything. A
student is worth its training only where it beats that member on the user's target, in accuracy
and in speed. `member_test_accuracy` measures the member against the ensemble's labels on the test
split (the frames the student is tested on); the speed step times it beside teacher and student on
every timed system (`mlff_distill.evaluation.speed.compare_speed`, ``member_*`` columns);
`member_verdict` compares the two.
"""

from __future__ import annotations

from typing import Any, Sequence

from mlff_distill.data import LabeledArrays
from mlff_distill.evaluation.accuracy import prediction_errors
from mlff_distill.teachers import Teacher


def member_of(teacher: Teacher) -> Teacher | None:
    """The first member of ``teacher`` as a teacher of its own where ``teacher`` is an ensemble of
    several members that can give one (FeNNol ensembles); otherwise None."""
    if teacher.identity.members < 2 or not hasattr(teacher, "member"):
        return None
    return teacher.member(0)


def member_test_accuracy(member: Teacher, test: LabeledArrays, compute_stress: bool) -> dict[str, Any]:
    """``member`` (its label) and its errors against the ensemble's labels ``test``: energy per
    atom (eV/atom), forces (eV/Angstrom, ``force_rel_rmse``) and, with ``compute_stress``, stress
    (GPa and ``stress_rel_error``), as for the student (`prediction_errors`)."""
    output = member.compute([test.atoms(i) for i in range(test.n_structures)], compute_stress=compute_stress)
    predictions = {
        "energy_eV": output.energy_eV,
        "forces_eV_per_A": output.forces_eV_per_A,
        "stress_eV_per_A3": output.stress_eV_per_A3,  # NaN where not computed: no stress errors then
    }
    return {"member": member.identity.label, **prediction_errors(test, predictions)}


def member_verdict(student_force_rel_rmse: float, speed_rows: Sequence[dict], member: dict) -> dict[str, Any]:
    """Whether the student beats the member: ``student_more_accurate`` (relative RMS force error on
    the test split) and ``student_faster_at_every_size`` (every timed system; None when none was
    timed with the member)."""
    timed = [row for row in speed_rows if row.get("member_ms") is not None]
    return {
        "student_more_accurate": student_force_rel_rmse < member["force_rel_rmse"],
        "student_faster_at_every_size": all(row["student_ms"] < row["member_ms"] for row in timed) if timed else None,
    }
