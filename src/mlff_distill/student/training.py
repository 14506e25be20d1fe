"""Train a student on a label store: data, reference energies, resumable state, and training in
one or several local processes.

`fit` reads the store's train and validation splits (in memory, or block by block above
``train.in_memory_max_GB``), fits per-species reference energies (eV) and trains with
`mlff_distill.student.fitting.train_student`. Resuming: after every epoch the full training state
goes to ``state_path`` (written atomically); a later call continues from it if it was made with the
same seed, student and training settings and the same label store (SHA-256 of its files), and
from the same initial weights (a warm start, as in the on-policy rounds); otherwise training starts
afresh and the log says why.

With ``train.processes`` above 1 (and no GPU), `train_in_processes` starts that many worker
processes (fresh interpreters calling `run_worker`, not forks of the caller, so that they work from
a Snakemake script job, whose ``__main__`` a spawned process could not import), each pinned to its
own core; each runs `fit` on its share of every epoch's batches, kept in step by
`mlff_distill.student.parallel`. Rank 0 saves the resumable state and reports each epoch; every
rank writes its final weights, and the parent checks that they agree.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist

from mlff_distill.contacts import closest_labeled_contacts_A, describe_contacts
from mlff_distill.settings import StudentSettings, TrainSettings, config_hash
from mlff_distill.store import store_checksum, store_species
from mlff_distill.student.dataset import StructureBlocks
from mlff_distill.student.fitting import reference_energy_fit, stress_rms, train_student
from mlff_distill.student.model import StudentPotential
from mlff_distill.student.parallel import COLLECTIVE_TIMEOUT, world

# The contact wall sits at the closest contact that this many training structures reach: the
# few frames from just before a blow-up that a round adds do not pull it in (they lie inside it,
# and the learned energy fits the teacher there on top of it).
CONTACT_WALL_STRUCTURES = 10


def state_path_for(checkpoint: Path) -> Path:
    """Where the resumable training state of ``checkpoint`` lives: ``<its dir>/resume/state.pt``."""
    return Path(checkpoint).parent / "resume" / "state.pt"


def training_fingerprint(
    student: StudentSettings,
    train: TrainSettings,
    seed: int,
    store: Path,
    initial_weights: Optional[dict[str, torch.Tensor]] = None,
) -> dict[str, str]:
    """What a saved state must match to be resumed: the hash of the seed, student and training
    settings (without ``train.resume``), the SHA-256 of the label store's files and, for a warm
    start, the SHA-256 of the initial weights (`weights_sha256`)."""
    training = {k: v for k, v in dataclasses.asdict(train).items() if k != "resume"}
    fingerprint = {
        "config_hash": config_hash({"seed": seed, "student": dataclasses.asdict(student), "train": training}),
        "store_sha256": store_checksum(Path(store)),
    }
    if initial_weights is not None:
        fingerprint["initial_weights_sha256"] = weights_sha256(initial_weights)
    return fingerprint


def weights_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of a ``state_dict``'s tensors, by name."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def contact_wall_radii(store: Path, species: Sequence[int], cutoff_A: float) -> list[list[float]]:
    """The contact wall's ``r0`` for each pair of ``species`` (Angstrom, a symmetric matrix in
    their order): the closest contact of the two elements that `CONTACT_WALL_STRUCTURES` structures
    of the training split of the label store ``store`` reach
    (`mlff_distill.contacts.closest_labeled_contacts_A`), 0 (no wall) for pairs never within
    ``cutoff_A``."""
    closest = closest_labeled_contacts_A(store, cutoff_A, nth=CONTACT_WALL_STRUCTURES)
    return [[closest.get((min(a, b), max(a, b)), 0.0) for b in species] for a in species]


def _log_walls(
    logger: logging.Logger, student: StudentSettings, species: Sequence[int], walls: Optional[list[list[float]]]
) -> None:
    """Log the contact wall's radii by pair of elements (nothing without a wall)."""
    if walls is None:
        return
    pairs = {(a, b): walls[i][j] for i, a in enumerate(species) for j, b in enumerate(species) if a <= b}
    logger.info(
        "contact wall of %g eV/A^3 below (A) %s",
        student.contact_wall_eV_per_A3,
        describe_contacts({pair: r for pair, r in pairs.items() if r > 0}),
    )


def _warn_undetermined(logger: logging.Logger, undetermined: Sequence[str], references: dict[int, float]) -> None:
    """Warn that the reference energies fitted (eV) leave the combinations ``undetermined`` open."""
    if undetermined:
        logger.warning(
            "the training compositions leave %d combination(s) of the reference energies undetermined (%s): "
            "the minimum-norm references %s (eV) are used, so the student's energies of structures whose "
            "composition is not a combination of the training structures' are arbitrary",
            len(undetermined),
            "; ".join(undetermined),
            {z: round(e, 3) for z, e in references.items()},
        )


def load_initial_weights(model: StudentPotential, initial_weights: dict[str, torch.Tensor]) -> None:
    """Load a previous student's ``state_dict`` into ``model`` (weights, reference energies and
    energy scale); raises ``ValueError`` saying what differs when it is not a student of the same
    number of species and sizes."""
    own = model.state_dict()
    missing = sorted(set(own) - set(initial_weights))
    unexpected = sorted(set(initial_weights) - set(own))
    shapes = [
        f"{name} {tuple(initial_weights[name].shape)} (here {tuple(own[name].shape)})"
        for name in sorted(set(own) & set(initial_weights))
        if initial_weights[name].shape != own[name].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"the initial weights are not those of a student like this one (species {model.species}, "
            f"{model.n_features} features, {model.n_radial} radial functions, {model.n_interactions} "
            f"interactions, angular order {model.angular_order}): missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}, other shapes {shapes[:5]}"
        )
    with torch.no_grad():
        model.load_state_dict(initial_weights)


def load_resume_state(path: Path, fingerprint: dict[str, str], logger: logging.Logger) -> Optional[dict]:
    """The state saved at ``path`` if it matches ``fingerprint``; else ``None``, logging why."""
    if not path.exists():
        logger.info("no training state at %s: starting fresh", path)
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a torn or foreign file: any load error means "start fresh"
        logger.warning("training state %s unreadable (%s): starting fresh", path, error)
        return None
    recorded = saved.get("fingerprint", {})
    changed = [key for key in sorted(set(fingerprint) | set(recorded)) if recorded.get(key) != fingerprint.get(key)]
    if changed:
        logger.info("training state %s was made with a different %s: starting fresh", path, " and ".join(changed))
        return None
    logger.info("resuming from %s after epoch %d", path, saved["state"]["epoch"])
    return saved["state"]


def save_state_atomic(path: Path, state: dict, fingerprint: dict[str, str]) -> None:
    """``torch.save`` of ``state`` and ``fingerprint`` to a temporary file renamed onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    torch.save({"fingerprint": fingerprint, "state": state}, partial)
    os.replace(partial, path)


def fit(
    student: StudentSettings,
    train: TrainSettings,
    seed: int,
    store: Path,
    state_path: Path,
    logger: logging.Logger,
    on_epoch: Optional[Callable[[int, dict], None]] = None,
    initial_weights: Optional[dict[str, torch.Tensor]] = None,
    on_policy_samples: Sequence[int] = (),
) -> tuple[StudentPotential, dict, dict[str, Any]]:
    """Train a student of size ``student`` on ``store`` as ``train`` says (``seed`` seeds the
    weights and batches), saving and resuming state at ``state_path``.

    ``on_policy_samples``: the sample indices (the store's ``sample_index``) of the on-policy
    frames, whose energy errors count ``train.on_policy_energy_weight`` times (`train_student`).

    ``initial_weights``: a previous student's ``state_dict`` (same species and sizes, else
    ``ValueError``) to start from instead of random weights; its reference energies are kept, not
    fitted afresh. Its hash is part of the resume fingerprint.

    Returns the model (best weights), the history of `train_student` and facts about the data
    (species, reference energies in eV and the combinations of them the data leave undetermined
    (`fitting.reference_energy_fit`; warned about in ``logger``), structure counts, RMS training
    stress in eV/Angstrom^3, the fingerprint). With ``train.processes`` above 1 (and no GPU), training runs in that many
    worker processes (`train_in_processes`), each of which calls this function.
    """
    if train.processes > 1 and world()[1] == 1 and not torch.cuda.is_available():
        weights, history, info = train_in_processes(
            student, train, seed, store, state_path, logger, on_epoch, initial_weights, on_policy_samples
        )
        model = StudentPotential(
            species=info["species"],
            reference_energies_eV=info["reference_energies_eV"],
            contact_wall_A=info["contact_wall_A"],
            **dataclasses.asdict(student),
        )
        model.load_state_dict(weights)
        _log_walls(logger, student, info["species"], info["contact_wall_A"])
        _warn_undetermined(logger, info["undetermined_reference_combinations"], info["reference_energies_eV"])
        return model, history, info
    max_bytes = train.in_memory_max_GB * 1e9
    training = StructureBlocks.from_store(store, "train", max_bytes)
    validation = StructureBlocks.from_store(store, "val", max_bytes)
    species = store_species(store)
    references, undetermined = reference_energy_fit(training, species)
    if initial_weights is not None:
        undetermined = []  # the previous student's references are kept (and were warned about)
    walls = contact_wall_radii(store, species, student.cutoff_A) if student.contact_wall_eV_per_A3 > 0 else None
    logger.info(
        "%d training and %d validation structures (%s); species %s; reference energies (eV) %s",
        training.n_structures,
        validation.n_structures,
        "in memory" if training.in_memory_data is not None else f"{len(training)} blocks read from the store",
        species,
        references,
    )
    torch.manual_seed(seed)
    model = StudentPotential(
        species=species, reference_energies_eV=references, contact_wall_A=walls, **dataclasses.asdict(student)
    )
    _log_walls(logger, student, species, walls)
    _warn_undetermined(logger, undetermined, references)
    if initial_weights is not None:
        load_initial_weights(model, initial_weights)
        references = dict(zip(model.species, model.reference_energies_eV.tolist()))
        logger.info("starting from the initial weights; their reference energies (eV) %s", references)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")  # a GPU when the job has one

    fingerprint = training_fingerprint(student, train, seed, store, initial_weights)
    resume_from = load_resume_state(state_path, fingerprint, logger) if train.resume else None
    if resume_from is not None and on_epoch is not None:
        for metrics in resume_from["history"]["epochs"]:
            on_epoch(metrics["epoch"], metrics)
    save = (lambda state: save_state_atomic(state_path, state, fingerprint)) if world()[0] == 0 else None
    history = train_student(
        model,
        training,
        validation,
        train,
        seed,
        on_epoch=on_epoch,
        resume_from=resume_from,
        on_state=save,
        on_policy_samples=on_policy_samples,
    )
    info = {
        "species": species,
        "reference_energies_eV": references,
        "undetermined_reference_combinations": undetermined,
        "contact_wall_A": walls,
        "n_train": training.n_structures,
        "n_val": validation.n_structures,
        "train_stress_rms_eV_per_A3": stress_rms(training),
        **fingerprint,
    }
    return model, history, info


def train_in_processes(
    student: StudentSettings,
    train: TrainSettings,
    seed: int,
    store: Path,
    state_path: Path,
    logger: logging.Logger,
    on_epoch: Optional[Callable[[int, dict], None]] = None,
    initial_weights: Optional[dict[str, torch.Tensor]] = None,
    on_policy_samples: Sequence[int] = (),
) -> tuple[dict, dict, dict[str, Any]]:
    """Run `fit` in ``train.processes`` workers (from ``initial_weights`` if given: a file they
    load); returns the trained weights (``state_dict``), the history and the data facts of `fit`.
    ``on_epoch(epoch, metrics)`` is called here as rank 0 reports epochs. Worker logs go to
    ``<state_path dir>/rank-<r>.log``.
    Raises ``RuntimeError`` with the end of its log if a worker fails (the others are stopped)."""
    state_path = Path(state_path).resolve()  # the rendezvous is a file:// URL: absolute paths only
    state_path.parent.mkdir(parents=True, exist_ok=True)
    processes = train.processes
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    with tempfile.TemporaryDirectory(dir=state_path.parent, prefix=".parallel-") as scratch:
        scratch = Path(scratch)
        job = {
            "student": dataclasses.asdict(student),
            "train": dataclasses.asdict(train),
            "seed": seed,
            "store": str(Path(store).resolve()),
            "state_path": str(state_path.resolve()),
            "processes": processes,
            "cores": cores if len(cores) >= processes else [],
            "rendezvous": f"file://{scratch / 'rendezvous'}",
            "epochs_file": str(scratch / "epochs.jsonl"),
            "results": str(scratch / "result-{rank}.pt"),
            "log": str(state_path.parent / "rank-{rank}.log"),
            "initial_weights": None if initial_weights is None else str(scratch / "initial_weights.pt"),
            "on_policy_samples": [int(index) for index in on_policy_samples],
        }
        if initial_weights is not None:
            torch.save({name: value.detach().cpu() for name, value in initial_weights.items()}, job["initial_weights"])
        (scratch / "job.json").write_text(json.dumps(job))
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = f"from {__name__} import run_worker; run_worker({str(scratch / 'job.json')!r}, {{rank}})"
        workers = [
            subprocess.Popen([sys.executable, "-c", command.format(rank=rank)], env=env) for rank in range(processes)
        ]
        logger.info("training in %d processes (logs %s)", processes, job["log"].format(rank="*"))
        reported = 0
        try:
            while True:
                reported = _report_epochs(Path(job["epochs_file"]), reported, on_epoch)
                codes = [w.poll() for w in workers]
                failed = [rank for rank, code in enumerate(codes) if code not in (None, 0)]
                if failed:
                    log = Path(job["log"].format(rank=failed[0]))
                    tail = log.read_text()[-2000:] if log.exists() else ""
                    raise RuntimeError(f"training process {failed[0]} exited with {codes[failed[0]]}:\n{tail}")
                if all(code == 0 for code in codes):
                    break
                time.sleep(0.5)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
                    worker.wait()
        _report_epochs(Path(job["epochs_file"]), reported, on_epoch)
        results = [torch.load(job["results"].format(rank=rank), weights_only=True) for rank in range(processes)]
    for rank, result in enumerate(results[1:], start=1):
        if any(not torch.equal(result["model"][name], value) for name, value in results[0]["model"].items()):
            raise RuntimeError(f"training process {rank} ended with other weights than process 0")
    return results[0]["model"], results[0]["history"], results[0]["info"]


def _report_epochs(path: Path, reported: int, on_epoch: Optional[Callable[[int, dict], None]]) -> int:
    """Pass the complete lines of ``path`` after the first ``reported`` to ``on_epoch``; the new count."""
    if not path.exists():
        return reported
    lines = path.read_text().split("\n")[:-1]  # the last piece may be a line still being written
    for line in lines[reported:]:
        metrics = json.loads(line)
        if on_epoch is not None:
            on_epoch(metrics["epoch"], metrics)
    return max(reported, len(lines))


def run_worker(job_file: str, rank: int) -> None:
    """One training process: join the group, train, save the final weights."""
    job = json.loads(Path(job_file).read_text())
    if job["cores"]:
        os.sched_setaffinity(0, {job["cores"][rank % len(job["cores"])]})
    logging.basicConfig(
        filename=job["log"].format(rank=rank),
        filemode="w",
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    torch.set_num_threads(job["train"]["threads"] or 1)
    dist.init_process_group(
        "gloo", init_method=job["rendezvous"], rank=rank, world_size=job["processes"], timeout=COLLECTIVE_TIMEOUT
    )

    def on_epoch(epoch: int, metrics: dict) -> None:
        with open(job["epochs_file"], "a") as handle:
            handle.write(json.dumps(metrics) + "\n")

    try:
        model, history, info = fit(
            StudentSettings(**job["student"]),
            TrainSettings(**job["train"]),
            job["seed"],
            Path(job["store"]),
            Path(job["state_path"]),
            logging.getLogger(__name__),
            on_epoch if rank == 0 else None,
            None if job["initial_weights"] is None else torch.load(job["initial_weights"], weights_only=True),
            job["on_policy_samples"],
        )
        torch.save({"model": model.state_dict(), "history": history, "info": info}, job["results"].format(rank=rank))
    except Exception:
        logging.getLogger(__name__).exception("training process %d failed", rank)  # its log's tail is reported
        raise
    finally:
        dist.destroy_process_group()
