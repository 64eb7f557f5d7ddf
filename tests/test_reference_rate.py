"""The pinned reference matmul rate of ``benchmarks/machine.py`` (issue 23): every sample kept,
the best seen before and after the timed work is the rate a bound divides by, the spread beside
it. Pure bookkeeping on given samples; nothing here is timed."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _machine():
    name = "benchmarks_machine_under_test"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "machine.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize(
    "before, after",
    [
        ([150e9, 190e9, 170e9], [160e9, 185e9]),  # best before
        ([150e9, 160e9], [199e9, 120e9, 180e9]),  # best after: a busy first measurement
        ([100e9], [100e9]),  # equal
        ([170e9] * 5, []),  # no after yet: empty measurement adds nothing
    ],
)
@pytest.mark.parametrize("bf16", [False, True])
def test_the_rate_is_the_best_sample_before_or_after(before, after, bf16) -> None:
    m = _machine()
    key = "bf16" if bf16 else "fp32"
    info = m.record_rates({"device": "cpu"}, "before", {key: before})
    assert m.rate_of(info, bf16=bf16) == max(before)
    if after:
        m.record_rates(info, "after", {key: after})
    every = before + after
    assert m.rate_of(info, bf16=bf16) == max(every)
    assert info[f"{key}_flops"] == max(every)
    assert info["rate_samples"][key]["before"] == before  # all samples kept, by measurement
    if after:
        assert info["rate_samples"][key]["after"] == after
    summary = info["rates"][key]
    assert summary["best"] == max(every) and summary["worst"] == min(every)
    assert summary["samples"] == len(every)
    assert summary["spread"] == pytest.approx((max(every) - min(every)) / max(every))
    assert set(info["rate_loads"]) == ({"before", "after"} if after else {"before"})


def test_precisions_are_kept_apart() -> None:
    m = _machine()
    info = m.record_rates({}, "before", {"fp32": [1.0, 3.0], "bf16": [5.0, 2.0]})
    m.record_rates(info, "after", {"fp32": [4.0], "bf16": [1.0]})
    assert m.rate_of(info) == 4.0 and m.rate_of(info, bf16=True) == 5.0


@pytest.mark.parametrize(
    "samples, median, spread",
    [([1.0], 1.0, 0.0), ([4.0, 2.0], 4.0, 0.5), ([3.0, 1.0, 2.0], 2.0, 2 / 3), ([5.0, 5.0, 4.0, 1.0], 5.0, 0.8)],
)
def test_summary_of_samples(samples, median, spread) -> None:
    s = _machine().summarise_rates(samples)
    assert s["best"] == max(samples) and s["worst"] == min(samples)
    assert s["median"] == median and s["spread"] == pytest.approx(spread)


def test_a_measurement_is_recorded_once_and_errors_name_what_is_missing() -> None:
    m = _machine()
    info = m.record_rates({}, "before", {"fp32": [1.0]})
    with pytest.raises(ValueError, match="'before' are already recorded"):
        m.record_rates(info, "before", {"fp32": [2.0]})
    assert m.rate_of(info) == 1.0  # the refused measurement left nothing behind
    with pytest.raises(ValueError, match="'before' are already recorded"):
        m.record_rates(info, "before", {"bf16": [9.0], "fp32": [2.0]})  # bf16 new, fp32 not
    assert "bf16" not in info["rate_samples"] and "bf16_flops" not in info  # all or nothing
    with pytest.raises(ValueError, match="no fp32 rate samples measured 'after'"):
        m.record_rates(info, "after", {"fp32": []})
    assert list(info["rate_samples"]["fp32"]) == ["before"]
    with pytest.raises(ValueError, match="no rate samples"):
        m.summarise_rates([])
    with pytest.raises(KeyError, match="no bf16 matmul rate"):
        m.rate_of(info, bf16=True)


def test_a_description_without_samples_still_gives_its_rate() -> None:
    # results files written before the samples were kept hold only fp32_flops / bf16_flops
    assert _machine().rate_of({"fp32_flops": 7.0, "bf16_flops": 9.0}, bf16=True) == 9.0


def test_measured_samples_are_one_per_product() -> None:
    m = _machine()
    samples = m.matmul_samples(__import__("torch").float32, "cpu", size=32, repeats=4)
    assert len(samples) == 4 and all(s > 0 for s in samples)
    info = m.reference_rates("cpu", repeats=2)
    assert {len(v) for v in info["rate_samples"]["fp32"].values()} == {2}
    assert m.rate_of(info) == max(info["rate_samples"]["fp32"]["before"])


def _script(name: str):
    key = f"benchmarks_{name}_under_test"
    if key not in sys.modules:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        spec = importlib.util.spec_from_file_location(key, ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("after", [[100e9], [250e9]])  # the after-measurement lower / higher
def test_sampling_bounds_use_the_best_rate_seen(bf16, after) -> None:
    m, throughput = _machine(), _script("throughput")
    key = "bf16" if bf16 else "fp32"
    machine = m.record_rates({"bandwidth_bytes": 1e10}, "before", {key: [150e9, 200e9]})
    run = {"kind": "sample", "bf16": bf16, "batch": 2, "seconds_per_image": 300.0,
           "sampling_executed_gflops_per_image": 40_000.0, "sampling_weight_gb_per_batch": 10.0}
    throughput.against_limits(run, machine)
    assert run["flop_bound_s_per_image"] == pytest.approx(200.0)
    m.record_rates(machine, "after", {key: after})
    throughput.against_limits(run, machine)  # set again once the after-measurement is in
    rate = max(200e9, *after)
    assert run["reference_flops"] == rate
    assert run["flop_bound_s_per_image"] == pytest.approx(40_000e9 / rate)
    assert run["bandwidth_bound_s_per_image"] == pytest.approx(10e9 / 1e10 / 2)
    assert run["x_of_bound"] == pytest.approx(300.0 / (40_000e9 / rate))
    train = {"kind": "train", "bf16": bf16, "executed_gflops_per_image": 1000.0, "images_per_s": 0.1}
    assert throughput.against_limits(train, machine)["fraction_of_matmul_rate"] == pytest.approx(100e9 / rate)


@pytest.mark.parametrize("after", [[100e9], [250e9]])
def test_alternated_steps_each_use_their_own_precisions_best_rate(after) -> None:
    """``throughput.py --alternate``: fp32 and bf16 steps of one model (and the bf16 step with
    SDPA), each median against its own precision's best rate, set again after the remeasure."""
    m, throughput = _machine(), _script("throughput")
    machine = m.record_rates({}, "before", {"fp32": [150e9, 200e9], "bf16": [300e9, 400e9]})
    run = {"kind": "train_alternate", "batch": 2, "executed_gflops_per_image": 1000.0,
           "median": {"fp32": {"step_s": 10.0}, "bf16": {"step_s": 5.0}, "bf16_sdpa": {"step_s": 8.0}}}
    throughput.against_limits(run, machine)
    assert run["median"]["fp32"]["fraction_of_matmul_rate"] == pytest.approx(200e9 / 200e9)
    m.record_rates(machine, "after", {"fp32": after, "bf16": after})
    throughput.against_limits(run, machine)
    fp32, bf16 = max(200e9, *after), max(400e9, *after)
    expected = {"fp32": 200e9 / fp32, "bf16": 400e9 / bf16, "bf16_sdpa": 250e9 / bf16}
    for key, fraction in expected.items():
        assert run["median"][key]["fraction_of_matmul_rate"] == pytest.approx(fraction)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_a_profile_is_set_against_its_bound_level_by_level(steps) -> None:
    m, profile = _machine(), _script("profile_levels")
    machine = m.record_rates({}, "before", {"fp32": [80e9, 100e9]})
    m.record_rates(machine, "after", {"fp32": [90e9]})
    result = {"bf16": False, "steps_timed": steps, "top_step_s": 6.0, "executed_gflops": 500.0 * steps,
              "levels": [{"level": "g1", "own_s_per_top_step": 5.0, "executed_gflops": 400.0 * steps},
                         {"level": "g2", "own_s_per_top_step": 1.0, "executed_gflops": 100.0 * steps}]}
    profile.against_bound(result, machine)
    assert result["reference_gflops_per_s"] == 100.0
    assert result["bound_s_per_top_step"] == pytest.approx(5.0) and result["x_of_bound"] == pytest.approx(1.2)
    assert [row["bound_s_per_top_step"] for row in result["levels"]] == pytest.approx([4.0, 1.0])
    assert [row["x_of_bound"] for row in result["levels"]] == pytest.approx([1.25, 1.0])
