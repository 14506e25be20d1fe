"""The explore stage of on-policy round k >= 1: the round k-1 student's MD on the targets
(`mlff_distill.sampling.on_policy`); its frames, and those just before any blow-up, are the
structures the round's label stage gives the teacher. Counts and blow-ups go to the log and MLflow.
"""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.io import read, write

from mlff_distill.calculator_pool import student_processes
from mlff_distill.logs import stage_logger
from mlff_distill.sampling.condensed import teacher_md_frames
from mlff_distill.sampling.on_policy import bare_structure, explore, label_contact_bounds
from mlff_distill.sampling.targets import target_start, targets_from
from mlff_distill.settings import ExploreSettings, SampleSettings, TargetSettings, build
from mlff_distill.store import FAILURES_FILE, read_index_columns, write_json_atomic
from mlff_distill.student.calculator import StudentCalculator
from mlff_distill.student.checkpoint import load_student
from mlff_distill.student.compilation import use_compile_cache
from mlff_distill.tracking import stage_run


def run(
    *,
    round_index: int,
    seed: int,
    target: dict,
    on_policy: dict,  # the on_policy section less its train:
    sample: dict,
    checkpoint: Path,
    store: Path,
    structures_file: Path,
    pipeline_file: Path,
    log_file: Path,
    sampled_file: Optional[Path] = None,
    threads: int = 1,
    stats_file: Optional[Path] = None,
    compile_cache_dir: Optional[Path] = None,
) -> None:
    """The Snakemake job: the student at ``checkpoint`` (the previous round's) runs Langevin MD
    from a start of every target at each of its temperatures (`target_starts`; ``sampled_file``:
    the sample stage's structures, whose teacher-MD frames are the starts); the frames go to
    ``structures_file`` (extxyz, written atomically), numbered after the largest sample index and
    group of ``store`` (the previous round's label store, its failures included); splits use
    ``sample.val_fraction``. The stats (`explore`'s, blow-ups listed) go to ``stats_file``
    (default: ``explore_stats.json`` beside the structures). On a CPU the student runs compiled
    (`torch.compile`, from the run's TorchInductor cache ``compile_cache_dir``), its fastest path there."""
    target_settings = build(TargetSettings, target, "target")
    settings = build(ExploreSettings, on_policy, "on_policy")
    val_fraction = build(SampleSettings, sample, "sample").val_fraction
    stats_file = Path(stats_file) if stats_file is not None else Path(structures_file).with_name("explore_stats.json")
    logger = stage_logger("explore", log_file)
    torch.set_num_threads(threads)
    use_compile_cache(compile_cache_dir, logger)
    model, _ = load_student(checkpoint)
    sampled = read(sampled_file, ":") if sampled_file is not None else []
    starts = target_starts(target_settings, seed, round_index, sampled, settings.start_from)
    _check_species(model.species, starts, checkpoint)
    first_sample_index, first_group = next_indices(Path(store))
    contacts = label_contact_bounds(Path(store), settings.contact_fraction)
    if contacts is not None:
        logger.info(
            "closest pairs in the teacher's training labels (A): %s; a blow-up below %g x these",
            contacts.describe(),
            settings.contact_fraction,
        )
    params = {"round": round_index, "seed": seed, "on_policy": on_policy, "checkpoint": str(checkpoint)}
    with stage_run(pipeline_file, "explore", params, log_file, round_index=round_index) as tracker:
        start = time.perf_counter()
        logger.info(
            "round %d: %d runs of %d steps of the student %s from %d starts (%s); "
            "sample indices from %d, groups from %d",
            round_index,
            settings.starts * len(starts),
            settings.steps,
            checkpoint,
            len(starts),
            ", ".join(
                f"{name} at {temperature_K:g} K ({atoms.info['start']})" for name, temperature_K, atoms in starts
            ),
            first_sample_index,
            first_group,
        )
        processes = student_processes(threads, settings.starts * len(starts))
        compiled = not torch.cuda.is_available()
        make_student = functools.partial(StudentCalculator, model, threads=threads // processes, compiled=compiled)
        structures, stats = explore(
            make_student if processes > 1 else make_student(),
            starts,
            settings,
            seed,
            round_index,
            first_sample_index,
            first_group,
            val_fraction,
            contacts,
            processes,
        )
        for blowup in stats["blowups"]:
            logger.warning(
                "blow-up: %s at %g K, run %d, after %.3f ps (step %d): %s",
                blowup["target"],
                blowup["temperature_K"],
                blowup["run"],
                blowup["time_ps"],
                blowup["step"],
                blowup["reason"],
            )
        _write_atomic(Path(structures_file), structures)
        write_json_atomic(stats_file, stats)
        metrics = {k: v for k, v in stats.items() if isinstance(v, (int, float))}
        tracker.log_metrics({**metrics, "seconds": time.perf_counter() - start})
        tracker.log_artifact(stats_file)
        logger.info(
            "round %d: %d runs, %d steps, %d blow-ups; %d frames (%d from just before a blow-up) in %s (%.1f s)",
            round_index,
            stats["n_runs"],
            stats["n_steps"],
            stats["n_blowups"],
            stats["n_frames"],
            stats["n_frames_before_blowup"],
            structures_file,
            time.perf_counter() - start,
        )


def target_starts(
    settings: TargetSettings, seed: int, round_index: int, sampled: Sequence[Atoms], start_from: str
) -> list[tuple[str, float, Atoms]]:
    """(target name, temperature in K, start) for every target and each of its temperatures.

    ``start_from`` "teacher-md": a frame drawn from the second half of the teacher's training (or
    validation) MD of that target and temperature among ``sampled``, never a test frame: an
    equilibrated start, as the user's own MD would have; without such frames, and for "fresh": a
    fresh `target_start` (a box packed anew, whose contacts no teacher frame has). Draws are seeded
    by ``seed``, the round and the target. ``info["start"]`` says where each start came from."""
    by_state = teacher_md_frames([atoms for atoms in sampled if atoms.info.get("strategy") == "md"])
    starts = []
    for number, target in enumerate(targets_from(settings.systems)):
        rng = np.random.default_rng([seed, round_index, number])
        for temperature_K in map(float, target.temperatures_K):
            frames = by_state.get((target.name, temperature_K), []) if start_from == "teacher-md" else []
            if frames:
                frame = frames[int(rng.integers(len(frames) // 2, len(frames)))]
                atoms = bare_structure(frame)
                atoms.info = {"start": f"teacher MD frame, sample {frame.info.get('sample_index')}"}
            else:
                atoms = target_start(target, rng, settings.min_distance_A)
                atoms.info = {"start": "fresh"}
            starts.append((target.name, temperature_K, atoms))
    return starts


def next_indices(store: Path) -> tuple[int, int]:
    """The first sample index and group after the largest of ``store`` and of the structures its
    labeling failed on (``failures.json`` beside it); 0 for an empty store."""
    columns = read_index_columns(store)
    failures_file = Path(store).parent / FAILURES_FILE
    failed = [f["sample_index"] for f in json.loads(failures_file.read_text())] if failures_file.is_file() else []
    indices = [*columns["sample_index"].tolist(), *failed]
    groups = columns["group"].tolist()
    return (max(indices) + 1 if indices else 0), (max(groups) + 1 if groups else 0)


def _check_species(species: list[int], starts: list[tuple[str, float, Atoms]], checkpoint: Path) -> None:
    """Raise naming a target with atoms the student does not know."""
    for name, _, atoms in starts:
        unknown = sorted(set(atoms.numbers.tolist()) - set(species))
        if unknown:
            raise ValueError(
                f"target {name} holds atomic numbers {unknown} that the student {checkpoint} does not know "
                f"(it knows {species}): the round-0 data must cover the targets' species"
            )


def _write_atomic(path: Path, structures: list[Atoms]) -> None:
    """``structures`` as extxyz at ``path``, through a temporary sibling renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    write(partial, structures, format="extxyz")
    os.replace(partial, path)
