"""benchmarks.report: ratios against the same run's dense baseline, merged over runs by median,
and tables named after the CPU's kernel ISA and oneDNN's ISA cap."""

import json

from benchmarks import report


def _run(path, dense_s, sparse_s, isa="avx2", onednn="AVX2"):
    info = {"cpu": "Test CPU", "cpu_isa": isa, "onednn_max_cpu_isa": onednn}
    common = dict(device="cpu", dtype="torch.float32", case="conv", pass_="fwd", batch=16,
                  block=[32, 32], density=0.5, kept_fraction=0.5)
    benchmarks = [
        {"extra_info": dict(common, impl="dense"), "stats": {"median": dense_s}},
        {"extra_info": dict(common, impl="sparse:cpu"), "stats": {"median": sparse_s}},
    ]
    path.write_text(json.dumps({"machine_info": {"sparsekit": info}, "benchmarks": benchmarks}))
    return str(path)


def test_runs_merge_by_median_of_per_run_ratios(tmp_path):
    # per-run speedups 2, 4 and 1 (a noisy run): the median is 2, not the ratio of medians
    files = [_run(tmp_path / "a.json", 2.0, 1.0), _run(tmp_path / "b.json", 4.0, 1.0),
             _run(tmp_path / "c.json", 1.0, 1.0)]
    (row,) = report.with_ratios(report.load(files))
    assert row["runs"] == 3 and row["speedup"] == 2.0 and row["eta"] == 1.0
    text = report.markdown([row])
    assert "Median over 3 runs" in text
    assert "### Test CPU (avx2 kernels, oneDNN AVX2)" in text


def test_isas_stay_apart(tmp_path):
    files = [_run(tmp_path / "a.json", 2.0, 1.0, isa="avx512", onednn=None),
             _run(tmp_path / "b.json", 3.0, 1.0)]
    rows = report.with_ratios(report.load(files))
    assert sorted(r["speedup"] for r in rows) == [2.0, 3.0]
    assert "oneDNN default" in report.markdown(rows)
