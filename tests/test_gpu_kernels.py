"""The CUDA scoring kernels (harness.kernels.cuda_scoring) against naive float64 formulas, in the CUDA simulator.

``NUMBA_ENABLE_CUDASIM=1`` must be set before ``numba.cuda`` is first imported
and would stay set for the whole process, so the kernels run in one child
process (this file run as a script): the parent draws every input, the child
scores each case on simulated device arrays and saves what it got (or the
error it raised), and the tests below compare. The rest of the test session
never sees the simulator. The simulator runs each GPU thread as a Python
thread, so blocks are small here; benchmarks/bench_cuda_kernels.py runs the
real sizes on a GPU.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import naive
import numpy as np
import pytest

NLL_ATOL = 1e-5  # the CPU kernels' budgets (tests/test_kernels.py)
KLD_ATOL = 1e-6
DELTA_P_ATOL = 1e-7


# ---- the inputs (drawn here, in the parent) ---------------------------------------------------


def _pair(rng, n, v, scale, noise):
    ref = (rng.uniform(-1.0, 1.0, (n, v)) * scale).astype(np.float32)
    return ref, (ref + rng.normal(0.0, noise, ref.shape)).astype(np.float32)


def _random_blocks(rng, count):
    """Small blocks of every kind tests/test_kernels.py's property test draws: scales, masks, ties."""
    blocks = []
    for _ in range(count):
        n, width = int(rng.integers(1, 4)), int(rng.integers(1, 600))
        scale = float(rng.choice([0.0, 1e-3, 1.0, 8.0, 30.0]))
        ref = rng.uniform(-scale, scale, (n, width))
        if rng.random() < 0.5:  # integer logits make top-1 ties common
            ref = np.round(ref)
        test = ref + rng.normal(0.0, float(rng.choice([0.0, 0.01, 1.0])), ref.shape)
        if rng.random() < 0.5:
            test = np.round(test)
        mask = rng.random((n, width)) < float(rng.choice([0.0, 0.3, 0.95]))
        mask[np.arange(n), rng.integers(0, width, n)] = False  # every row keeps a token
        ref[mask] = test[mask] = -np.inf
        targets = np.array([rng.choice(np.flatnonzero(~m)) for m in mask])
        blocks.append((ref.astype(np.float32), test.astype(np.float32), targets))
    return blocks


def _cases() -> dict:
    """name -> (kernel, threads per row, ref, test, targets); kernel "nll" ignores test."""
    rng = np.random.default_rng(0)
    cases = {}
    for scale in (0.1, 1.0, 10.0, 30.0):
        ref, test = _pair(rng, 4, 3000, scale, 0.3)
        cases[f"scale-{scale}"] = ("both", 32, ref, test, rng.integers(0, 3000, 4))
    ref, test = _pair(rng, 3, 2051, 5.0, 0.3)
    cases["default-threads"] = ("both", None, ref, test, rng.integers(0, 2051, 3))
    ref, test = _pair(rng, 2, 3000, 5.0, 0.3)
    cases["1024-threads"] = ("both", 1024, ref, test, rng.integers(0, 3000, 2))
    ref, test = _pair(rng, 2, 5, 3.0, 0.3)
    cases["row-narrower-than-block"] = ("both", 64, ref, test, np.array([0, 4]))
    # unrelated distributions: KL over 50 nats, a small difference of large terms
    ref = (rng.normal(0.0, 30.0, (2, 1000))).astype(np.float32)
    test = (rng.normal(0.0, 30.0, (2, 1000))).astype(np.float32)
    cases["kld-over-50-nats"] = ("both", 32, ref, test, np.array([3, 7]))
    cases["identical"] = ("both", 32, ref, ref.copy(), np.array([3, 7]))
    masked = np.full((1, 4 * 64), -np.inf, dtype=np.float32)
    masked[0, 200:204] = [0.0, 1.0, 0.0, -np.inf]
    cases["masked-prefix"] = ("both", 64, masked, masked.copy(), np.array([201]))
    cases["masked-target"] = ("nll", 64, masked, masked, np.array([203]))
    test_masks = masked.copy()
    test_masks[0, 200] = -np.inf
    cases["test-masks-a-reference-token"] = ("both", 64, masked, test_masks, np.array([201]))
    ties = np.zeros((2, 300), dtype=np.float32)
    ties[0, [7, 40, 299]] = 5.0  # three threads each hold a tied maximum: the lowest index must win
    ties[1, [34, 33]] = 2.0  # neighbours, in two threads of the same warp
    tie_test = ties.copy()
    tie_test[0, 7] = 4.0
    cases["ties"] = ("both", 32, ties, tie_test, np.array([0, 1]))
    for i, (ref, test, targets) in enumerate(_random_blocks(rng, 24)):
        cases[f"random-{i}"] = ("both", 32, ref, test, targets)
    return cases


def _bad_inputs() -> dict:
    """name -> (kernel, ref, test, targets): inputs the wrappers must refuse, each with what a fix needs."""
    good = np.zeros((2, 5), dtype=np.float32)
    with_nan, with_inf, all_masked = good.copy(), good.copy(), good.copy()
    with_nan[1, 2] = np.nan
    with_inf[0, 1] = np.inf
    all_masked[1] = -np.inf
    targets = np.array([0, 4])
    return {
        "float64": ("nll", good.astype(np.float64), None, targets),
        "one-dimensional": ("nll", good[0], None, np.array([0])),
        "strided": ("nll", np.zeros((2, 10), dtype=np.float32), None, targets),  # the child takes [:, ::2]
        "target-out-of-range": ("nll", good, None, np.array([0, 5])),
        "nan-row": ("nll", with_nan, None, targets),
        "inf-row": ("both", with_inf, good, targets),
        "fully-masked-row": ("both", good, all_masked, targets),
        "shapes-differ": ("both", good, np.zeros((2, 6), dtype=np.float32), targets),
        "host-array": ("host-nll", good, None, targets),
    }


# ---- the child: run each case on (simulated) device arrays ----------------------------------------


def _run_in_simulator(inputs_path: str, outputs_path: str) -> None:
    from numba import cuda

    from harness.kernels import divergence, to_host, token_nll
    from harness.kernels.cuda_scoring import cuda_divergence, cuda_token_nll

    with open(inputs_path, "rb") as f:
        cases, bad = pickle.load(f)
    got = {}
    for name, (kernel, threads, ref, test, targets) in cases.items():
        d_ref = cuda.to_device(ref)
        out = {"nll": cuda_token_nll(d_ref, targets, threads_per_row=threads)}
        if kernel == "both":
            out["divergence"] = vars(cuda_divergence(d_ref, cuda.to_device(test), targets, threads_per_row=threads))
        got[name] = out
    ref, test, targets = cases["scale-1.0"][2:]
    got["dispatch"] = {
        "nll": token_nll(cuda.to_device(ref), targets),
        "device-both": vars(divergence(cuda.to_device(ref), cuda.to_device(test), targets)),
        "device-ref-host-test": vars(divergence(cuda.to_device(ref), test, targets)),
        "host-ref-device-test": vars(divergence(ref, cuda.to_device(test), targets)),
        "to_host": to_host(cuda.to_device(ref)),
        "empty": token_nll(cuda.to_device(np.zeros((0, 7), dtype=np.float32)), np.zeros(0, dtype=np.int64)),
    }
    errors = {}
    for name, (kernel, ref, test, targets) in bad.items():
        try:
            if kernel == "host-nll":
                cuda_token_nll(ref, targets)
            elif kernel == "nll":
                cuda_token_nll(cuda.to_device(ref)[:, ::2] if name == "strided" else cuda.to_device(ref), targets)
            else:
                cuda_divergence(cuda.to_device(ref), cuda.to_device(test), targets)
            errors[name] = None
        except (TypeError, ValueError) as exc:
            errors[name] = [type(exc).__name__, str(exc)]
    with open(outputs_path, "wb") as f:
        pickle.dump((got, errors), f)


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """(cases, bad inputs, results, errors): every case scored once in a child under the CUDA simulator."""
    folder = tmp_path_factory.mktemp("cudasim")
    cases, bad = _cases(), _bad_inputs()
    with open(folder / "inputs.pkl", "wb") as f:
        pickle.dump((cases, bad), f)
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    proc = subprocess.run([sys.executable, __file__, str(folder / "inputs.pkl"), str(folder / "outputs.pkl")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(folder / "outputs.pkl", "rb") as f:
        got, errors = pickle.load(f)
    return cases, bad, got, errors


def _scored_cases(simulated, kernel="both"):
    cases, _, got, _ = simulated
    return [(name, case, got[name]) for name, case in cases.items() if case[0] == kernel or kernel == "any"]


# ---- the tests ----------------------------------------------------------------------------------------


def test_simulated_nll_matches_float64_within_1e5_in_every_case(simulated):
    for name, (_, _, ref, _, targets), out in _scored_cases(simulated, "any"):
        np.testing.assert_allclose(out["nll"], naive.token_nll(ref, targets), rtol=0, atol=NLL_ATOL, err_msg=name)


def test_simulated_divergence_matches_float64_kld_top1_and_delta_p(simulated):
    for name, (_, _, ref, test, targets), out in _scored_cases(simulated):
        kld, agree, delta_p = naive.divergence(ref, test, targets)
        got = out["divergence"]
        np.testing.assert_allclose(got["kld"], kld, rtol=0, atol=KLD_ATOL, err_msg=name)
        np.testing.assert_array_equal(got["top1_agree"], agree, err_msg=name)
        np.testing.assert_allclose(got["delta_p"], delta_p, rtol=0, atol=DELTA_P_ATOL, err_msg=name)
        np.testing.assert_allclose(got["ref_nll"], naive.token_nll(ref, targets), rtol=0, atol=NLL_ATOL, err_msg=name)
        np.testing.assert_allclose(got["test_nll"], naive.token_nll(test, targets), rtol=0, atol=NLL_ATOL,
                                   err_msg=name)


def test_simulated_kld_of_unrelated_distributions_is_over_50_nats_and_within_1e6(simulated):
    _, _, got, _ = simulated
    ref, test, targets = _cases()["kld-over-50-nats"][2:]
    kld = got["kld-over-50-nats"]["divergence"]["kld"]
    assert kld.min() > 50
    np.testing.assert_allclose(kld, naive.divergence(ref, test, targets)[0], rtol=0, atol=KLD_ATOL)


def test_simulated_identical_rows_give_exactly_zero_kld_and_zero_paired_difference(simulated):
    got = simulated[2]["identical"]["divergence"]
    assert np.all(got["kld"] == 0.0) and np.all(got["delta_p"] == 0.0) and got["top1_agree"].all()
    assert np.array_equal(got["ref_nll"], got["test_nll"])


def test_simulated_masks_a_masked_target_is_infinite_and_a_masked_reference_token_infinite_kld(simulated):
    got = simulated[2]
    assert got["masked-target"]["nll"][0] == np.inf
    assert got["masked-prefix"]["divergence"]["kld"][0] == 0.0
    np.testing.assert_allclose(got["masked-prefix"]["nll"], [np.log1p(2 * np.exp(-1.0))], rtol=0, atol=1e-7)
    assert got["test-masks-a-reference-token"]["divergence"]["kld"][0] == np.inf


def test_simulated_top1_ties_across_threads_resolve_to_the_lowest_index(simulated):
    got = simulated[2]["ties"]["divergence"]["top1_agree"]
    # row 0: ref's first maximum is index 7, test's (7 lowered) is 40; row 1: both 33
    assert got.tolist() == [False, True]


def test_dispatch_scores_device_blocks_on_the_gpu_and_mixed_pairs_on_the_host(simulated):
    cases, _, got, _ = simulated
    ref, test, targets = cases["scale-1.0"][2:]
    from harness.kernels import divergence, token_nll

    dispatch = got["dispatch"]
    np.testing.assert_allclose(dispatch["nll"], token_nll(ref, targets), rtol=0, atol=NLL_ATOL)
    cpu = divergence(ref, test, targets)
    for key in ("device-both", "device-ref-host-test", "host-ref-device-test"):
        np.testing.assert_allclose(dispatch[key]["kld"], cpu.kld, rtol=0, atol=KLD_ATOL, err_msg=key)
    # a mixed pair went to the CPU kernels: their very numbers
    np.testing.assert_array_equal(dispatch["device-ref-host-test"]["kld"], cpu.kld)
    np.testing.assert_array_equal(dispatch["to_host"], ref)
    assert dispatch["empty"].shape == (0,)


@pytest.mark.parametrize(
    "name,error,message",
    [
        ("float64", "TypeError", r"pass float32 \(tensor.float\(\)"),
        ("one-dimensional", "ValueError", "2-D"),
        ("strided", "ValueError", "contiguous"),
        ("target-out-of-range", "ValueError", r"targets\[1\] = 5 is outside the vocabulary"),
        ("nan-row", "ValueError", r"logits\[1\] contains NaN"),
        ("inf-row", "ValueError", r"ref_logits\[0\] contains \+inf"),
        ("fully-masked-row", "ValueError", r"test_logits\[1\] is entirely -inf"),
        ("shapes-differ", "ValueError", "differ"),
        ("host-array", "TypeError", "CPU kernels take numpy arrays"),
    ],
)
def test_simulated_bad_input_raises_saying_how_to_fix(simulated, name, error, message):
    import re

    got = simulated[3][name]
    assert got is not None, f"{name} was accepted"
    assert got[0] == error and re.search(message, got[1]), got


def test_threads_per_row_must_be_a_power_of_two_up_to_1024():
    code = ("from harness.kernels.cuda_scoring import _threads\n"
            "for bad in (0, 3, 2048, True):\n"
            "    try:\n        _threads(bad)\n    except ValueError as e:\n        print(e)\n"
            "print(_threads(None), _threads(64))")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
                          capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    assert len(lines) == 5 and all("power of two" in line or "1024" in line for line in lines[:4]), proc.stderr
    assert lines[4] == "256 64"


def test_device_scoring_is_unavailable_without_a_gpu_and_the_cpu_kernels_are_untouched():
    """Without the simulator, this machine's answer is whether numba finds a GPU; numpy input never touches CUDA."""
    code = ("import sys, json, numpy as np\n"
            "from harness.kernels import device_scoring_available, token_nll, is_device_array\n"
            "token_nll(np.zeros((1, 3), dtype=np.float32), [0])\n"
            "imported = 'numba.cuda' in sys.modules\n"
            "print(json.dumps([device_scoring_available(), imported, is_device_array(np.zeros(2))]))")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    available, imported_cuda, numpy_on_device = json.loads(proc.stdout.splitlines()[-1])
    from harness.machine.monitor import nvml_available

    assert available == nvml_available()  # a GPU where NVML sees one, else none
    assert imported_cuda is False and numpy_on_device is False


if __name__ == "__main__":  # the child of the ``simulated`` fixture
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    _run_in_simulator(sys.argv[1], sys.argv[2])
