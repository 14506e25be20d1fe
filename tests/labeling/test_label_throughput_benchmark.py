"""benchmarks/label_throughput.py: the label stage's throughput in its own process and on Dask
workers, with the ANI-1x teacher on small periodic water boxes."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "label_throughput.py"


def test_in_process_and_one_worker_label_every_box_and_report_their_costs(tmp_path):
    spec = importlib.util.spec_from_file_location("label_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "label_throughput.json"
    report = module.main(
        ["--teacher", "ani1x", "--workers", "0", "1", "--structures", "4", "--shard-size", "2"]
        + ["--waters-per-side", "2", "--out", str(out), "--workdir", str(tmp_path)]
    )
    assert out.is_file()
    rows = {row["workers"]: row for row in report["results"]}
    assert sorted(rows) == [0, 1]
    for row in rows.values():
        assert row["n_failed"] == 0 and row["n_structures"] == 4 and row["atoms_per_structure"] == 24
        assert row["structures_per_second"] > 0
        parts = row["cluster_start_seconds"] + row["warmup_seconds"] + row["label_seconds"]
        assert abs(row["total_seconds"] - parts) < 1e-9
    assert rows[0]["cluster_start_seconds"] == 0.0 < rows[1]["cluster_start_seconds"]  # no cluster in-process
    assert set(report["speedups"]["ani1x"]) == {"1_vs_0_workers"}
