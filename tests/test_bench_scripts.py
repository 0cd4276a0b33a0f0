"""The profiling helpers behind benchmarks/README.md's CPU analysis run and refuse bad input."""

import os
import shutil
import subprocess

import pytest

from benchmarks import fma_peak, step_profile


def test_step_profile_splits_an_iteration_into_layer_ops_and_the_rest(capsys):
    step_profile.main(["--pairs", "0.1,0.2", "--width", "0.25", "--iterations", "1", "--top", "2",
                       "--shapes"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("G 0.1 / D 0.2:") and "layer ops" in lines[0]
    assert "everything else" in lines[0] and len(lines) == 3 and "[[" in lines[1]


@pytest.mark.parametrize("argv, message", [(["--pairs", "0.1"], "--pairs"),
                                           (["--iterations", "0"], "--iterations"),
                                           (["--pairs", "2,0.5"], "--g-density must be in")])
def test_step_profile_refuses_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit):
        step_profile.main(argv)
    assert message in capsys.readouterr().err


@pytest.mark.skipif(os.uname().machine != "x86_64"
                    or shutil.which(os.environ.get("CC", "cc")) is None,
                    reason="the FMA loop is x86-64 code and needs a C compiler ($CC or cc)")
def test_fma_peak_measures_a_rate(capsys):
    if "fma" not in fma_peak.cpu_flags():
        pytest.skip("this CPU has no FMA")
    try:
        fma_peak.main(["--isa", "avx2", "--threads", "1", "--iterations", "100000"])
    except subprocess.CalledProcessError as e:
        pytest.skip(f"the C compiler could not build the OpenMP FMA loop: {e}")
    out = capsys.readouterr().out
    assert out.startswith("avx2 FMA peak:") and "GFLOP/s on 1 thread(s)" in out
