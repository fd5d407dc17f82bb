"""wrc bench: the timing and memory primitives, the solve's inputs and byte count, a whole small run on the CPU
(every requested case, batch, precision and backend, consistent statistics and ratios), and the command line."""

from __future__ import annotations

import json
import time

import pytest
import torch

from wrcli.bench import (
    BenchOptions,
    compulsory_bytes,
    contention,
    parse_batches,
    parse_choices,
    peak_memory,
    report_table,
    run_bench,
    solve_args,
    solve_inputs,
    summarise,
    time_call,
)
from wrcli.errors import WrcError

from .conftest import ARCH
from .test_extract import error_line, run_cli

CPU = torch.device("cpu")
C = (384 + 32) // 2  # the solve runs at the WRC layer width of ViT-S (208)
GRID = 4  # 56 px / patch 14


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, two threads contending with other processes run the small
    cases many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- primitives ----------------------------------------------------------------------------------------------

def test_time_call_times_each_repeat_after_the_warm_up():
    calls = []

    def nap() -> None:
        calls.append(None)
        time.sleep(0.005)

    times = time_call(nap, CPU, warmup=2, repeats=3)
    assert len(calls) == 5 and len(times) == 3
    assert all(5.0 <= t < 500 for t in times)


def test_summarise_gives_interpolated_quartiles():
    stats = summarise([4.0, 1.0, 3.0, 2.0])
    assert (stats["min"], stats["p25"], stats["median"], stats["p75"], stats["max"]) == (1.0, 1.75, 2.5, 3.25, 4.0)
    assert stats["runs"] == [4.0, 1.0, 3.0, 2.0]
    assert summarise([7.0])["p25"] == summarise([7.0])["p75"] == 7.0


def test_peak_memory_on_cpu_sees_the_case_allocation():
    with peak_memory(CPU) as memory:
        x = torch.ones(32 << 20)  # 128 MiB, touched
        del x
    if memory["scope"] != "process RSS, this case":
        pytest.skip(f"no per-case peak resident set here ({memory['scope']})")
    assert memory["rise_mib"] >= 120 and memory["peak_mib"] >= memory["rise_mib"]
    with peak_memory(CPU) as small:  # the peak was reset: the previous 128 MiB do not count
        torch.ones(1 << 10)
    assert small["rise_mib"] < 64


def test_solve_inputs_have_the_layer_shapes_and_the_byte_count():
    inputs = solve_inputs(2, 8, (3, 5), 2, torch.bfloat16, CPU)
    assert inputs["y"].shape == (2, 8, 7, 9) and inputs["x0"].shape == (2, 8, 14, 18)
    assert inputs["w_low"].shape == inputs["y"].shape and inputs["w_high"].shape == inputs["x0"].shape
    assert all(inputs[k].dtype == torch.bfloat16 for k in ("y", "x0", "w_low", "w_high"))
    assert inputs["w_low"].min() >= 0 and inputs["w_high"].min() >= 0
    assert inputs["kernel"].shape == (8, 2, 2) and torch.allclose(inputs["kernel"].sum((1, 2)), torch.ones(8))
    low, high = 2 * 8 * 7 * 9 * 2, 2 * 8 * 14 * 18 * 2
    params = 8 * 4 * 4 + 8 * 4  # kernel and λ in float32
    assert compulsory_bytes(solve_args("official", inputs)) == 2 * low + 2 * high + params + high
    assert compulsory_bytes(solve_args("converse", inputs)) == low + high + params + high


def test_option_lists_are_validated():
    assert parse_batches("8, 1,8") == [8, 1]
    assert parse_choices("all", ("a", "b"), "--x") == ["a", "b"]
    for bad in ("", "0", "1,x", "-2"):
        with pytest.raises(WrcError, match="--batch"):
            parse_batches(bad)
    with pytest.raises(WrcError, match="'fp16'"):
        parse_choices("fp32,fp16", ("fp32", "bf16"), "--precision")


def test_contention_warns_when_other_processes_hold_the_cpus():
    assert contention(0.2, 2, 2) is None and contention(1.4, 2, 1) is None and contention(None, 2, 2) is None
    assert contention(3.0, 16, 8) is None  # plenty of idle CPUs left for the threads
    warning = contention(1.2, 2, 2)
    assert "load average 1.2 on 2 CPUs" in warning and "2 torch threads" in warning
    assert "OMP_NUM_THREADS=1" in warning and contention(1.6, 2, 1) is not None


def rendered(table) -> list[str]:
    import io

    from rich.console import Console

    console = Console(width=200, file=io.StringIO())
    console.print(table)
    return console.file.getvalue().splitlines()


def cells_of(line: str) -> list[str]:
    return [c.strip() for c in line.strip()[1:-1].split("│")]


def synthetic_row(case: str, name: str, backend: str | None, median: float, **extra) -> dict:
    t = {"median": median, "p25": median * 0.9, "p75": median * 1.1, "min": median * 0.8, "max": median * 1.5,
         "runs": [median]}
    return {"case": case, "name": name, "batch": 2, "precision": "bf16", "backend": backend, "time_ms": t,
            "per_image_ms": median / 2, "memory": {"scope": "process RSS, this case", "peak_mib": 812.4, "rise_mib": 31.6},
            "relative": None, **extra}


def test_report_table_has_one_row_per_result_and_the_caption():
    solve = synthetic_row("solve", "exact", "compiled", 12.34, relative={"to": "fft", "ratio": 1.5},
                          floor={"us": 250.0, "measured_over_floor": 49.36})
    fft = synthetic_row("fft", "rfft2+irfft2", None, 8.2, memory={"scope": "process RSS, this case", "peak_mib": None})
    report = {
        "settings": {"backbone": ARCH, "size": 448, "grid": [32, 32], "scale": 2, "device": "cpu", "warmup": 2, "repeats": 5},
        "environment": {"cpu_threads": 2, "cpus": 2, "load_average": [1.2, 2.5]},
        "results": [solve, fft], "bandwidth": {"copy_bytes_per_s": 13.4e9, "peak_bytes_per_s": None},
        "skipped": [{"case": "solve", "backend": "cupy", "reason": "needs CUDA"}],
        "warnings": ["load average 1.2 on 2 CPUs before the run"],
    }
    lines = rendered(report_table(report))
    assert "448 px, grid 32×32, ×2" in lines[0] and "cpu, 2 threads" in lines[0] and "5 repeats" in lines[0]
    exact = [line for line in lines if " exact " in line]
    assert len(exact) == 1
    assert cells_of(exact[0]) == ["solve", "exact", "2", "bf16", "compiled", "12.3", "11.1–13.6", "9.87–18.5", "6.17",
                     "812 (+32)", "1.50× fft", "250", "49.4×"]
    assert cells_of(next(line for line in lines if "rfft2" in line))[9:] == ["-", "", "", ""]
    text = "\n".join(lines)
    assert "copy bandwidth 13.4 GB/s" in text and "1.2 at the start, 2.5 at the end, on 2 CPUs" in text
    assert "skipped solve cupy: needs CUDA" in text and "warning: load average 1.2 on 2 CPUs" in text


# -- a whole run ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(vits_weights) -> dict:
    opts = BenchOptions(backbone=ARCH, backbone_weights=str(vits_weights), upsamplers="bilinear,default", device="cpu",
                        size=56, batches="1,2", precisions="fp32,bf16", backends="torch,cupy", warmup=0, repeats=2)
    return run_bench(opts)


def rows_of(report: dict, case: str) -> dict[tuple, dict]:
    return {(r["name"], r["batch"], r["precision"], r["backend"]): r for r in report["results"] if r["case"] == case}


def test_every_requested_combination_is_measured(report):
    batches, precisions = (1, 2), ("fp32", "bf16")
    assert set(rows_of(report, "backbone")) == {(ARCH, b, p, None) for b in batches for p in precisions}
    for case in ("upsampler", "pipeline"):  # "default" ran as wrc (its shipped checkpoint); bilinear has no solve
        assert set(rows_of(report, case)) == {(n, b, p, k) for n, k in (("bilinear", None), ("wrc", "torch"))
                                              for b in batches for p in precisions}
    assert set(rows_of(report, "solve")) == {(s, b, p, "torch") for s in ("official", "exact", "converse")
                                             for b in batches for p in precisions}
    assert set(rows_of(report, "fft")) == {("rfft2+irfft2", b, "fp32", None) for b in batches}
    assert [(s["case"], s["backend"]) for s in report["skipped"]] == [("upsampler,solve,pipeline", "cupy")]
    assert "CUDA device" in report["skipped"][0]["reason"]
    assert report["settings"]["backends"] == ["torch"] and report["settings"]["grid"] == [GRID, GRID]
    env = report["environment"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["cpu_threads"] == 1
    assert len(env["load_average"]) == 2
    assert report["warnings"] == ([w] if (w := contention(env["load_average"][0], env["cpus"], 1)) else [])
    json.dumps(report)  # plain JSON, nothing needs a default


def test_statistics_are_consistent(report):
    for row in report["results"]:
        t = row["time_ms"]
        assert len(t["runs"]) == 2 and 0 < t["min"] <= t["p25"] <= t["median"] <= t["p75"] <= t["max"]
        assert t["median"] == pytest.approx(sum(t["runs"]) / 2)
        assert row["per_image_ms"] == pytest.approx(t["median"] / row["batch"])
        assert row["memory"]["peak_mib"] > 50  # a Python process with torch is never smaller


def test_ratios_and_floor_use_the_right_references(report):
    median = {(r["case"], r["name"], r["batch"], r["precision"]): r["time_ms"]["median"] for r in report["results"]}
    for row in report["results"]:
        key = (row["name"], row["batch"], row["precision"])
        if row["case"] == "solve":
            ref = median[("fft", "rfft2+irfft2", row["batch"], "fp32")]
            assert row["relative"] == {"to": "fft", "ratio": pytest.approx(median[("solve", *key)] / ref)}
        elif row["case"] in ("upsampler", "pipeline"):
            ref = median[("backbone", ARCH, row["batch"], row["precision"])]
            assert row["relative"] == {"to": "backbone", "ratio": pytest.approx(median[(row["case"], *key)] / ref)}
        else:
            assert row["relative"] is None
    official = rows_of(report, "solve")[("official", 2, "fp32", "torch")]
    assert official["shapes"]["y"] == [2, C, GRID + 4, GRID + 4] and official["shapes"]["x0"] == [2, C, 16, 16]
    low, high = 2 * C * 8 * 8 * 4, 2 * C * 16 * 16 * 4
    assert official["floor"]["bytes"] == 2 * low + 3 * high + C * 4 * 4 + C * 4
    bandwidth = report["bandwidth"]["copy_bytes_per_s"]
    assert 1e8 < bandwidth < 1e13 and report["bandwidth"]["peak_bytes_per_s"] is None
    assert official["floor"]["us"] == pytest.approx(official["floor"]["bytes"] / bandwidth * 1e6)
    assert official["floor"]["measured_over_floor"] == pytest.approx(
        official["time_ms"]["median"] * 1e3 / official["floor"]["us"])


# -- the command line ----------------------------------------------------------------------------------------

def bench_args(weights, *extra: str) -> list[str]:
    return ["bench", "--backbone", ARCH, "--backbone-weights", str(weights), "--device", "cpu", "--size", "56",
            "--warmup", "0", "--repeats", "1", *extra]


def test_cli_json_file_and_table(vits_weights, tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench.json"
    code, stdout, err = run_cli(bench_args(vits_weights, "--cases", "backbone,upsampler", "--upsampler", "bilinear",
                                           "--batch", "3", "--precision", "fp32", "--json", "--out", str(out)),
                                capsys, monkeypatch)
    assert code == 0, err
    printed = json.loads(stdout)
    assert printed["results"] == json.loads(out.read_text())["results"]
    assert [(r["case"], r["name"], r["batch"]) for r in printed["results"]] == [("backbone", ARCH, 3),
                                                                                 ("upsampler", "bilinear", 3)]
    assert printed["environment"]["command"].startswith("wrc bench") and "bench: backbone" in err

    code, stdout, err = run_cli(bench_args(vits_weights, "--cases", "solve,fft", "--batch", "1", "--backend", "torch,cupy",
                                           "--precision", "bf16"), capsys, monkeypatch)
    assert code == 0, err
    lines = stdout.splitlines()
    assert sum(" official " in line and " bf16 " in line and "× fft" in line for line in lines) == 1
    assert any("skipped solve cupy" in line for line in lines)


@pytest.mark.parametrize("extra, message", [
    (["--cases", "backbone,warp"], "--cases: got 'warp'"),
    (["--batch", "1,x"], "--batch expects positive integers"),
    (["--backend", "cupy"], "cupy solve backend needs a CUDA device"),
    (["--size", "50"], "--size 50 is not a positive multiple of the patch size 14"),
])
def test_cli_errors_are_one_line(vits_weights, extra, message, capsys, monkeypatch):
    code, stdout, err = run_cli(bench_args(vits_weights, *extra), capsys, monkeypatch)
    assert code == 1 and stdout == ""
    assert message in error_line(err)


@pytest.mark.slow
def test_upsampler_rows_per_backend(vits_weights):
    """A learned upsampler is timed once per backend (compiled: its passes compiled whole), an interpolation once."""
    opts = BenchOptions(backbone=ARCH, backbone_weights=str(vits_weights), upsamplers="bilinear,default", device="cpu",
                        size=56, batches="1", precisions="fp32", backends="torch,compiled", cases="backbone,upsampler",
                        warmup=1, repeats=1)
    report = run_bench(opts)
    assert set(rows_of(report, "upsampler")) == {("bilinear", 1, "fp32", None), ("wrc", 1, "fp32", "torch"),
                                                 ("wrc", 1, "fp32", "compiled")}
    assert all(r["relative"]["to"] == "backbone" for r in report["results"] if r["case"] == "upsampler")
