"""Smoke test of benchmarks/benchmark.py: the quick run finishes and reports every figure.

Not a timed test: it checks that each figure is there and is a sensible number, not its value.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from tests.support.paths import REPO


def test_quick_benchmark_reports_every_figure(tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/benchmark.py", "--quick", "--json", str(out),
         "--cache", str(tmp_path / "cache")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    figures = results["figures"]
    expected = {
        "train_default_images_per_second", "train_seed_baseline_images_per_second",
        "train_speed_ratio_default_over_baseline", "test_iou_default", "test_iou_seed_baseline",
        "inference_pytorch_eager_ms_per_chip", "inference_onnxruntime_ms_per_chip",
        "inference_eager_over_onnx_ratio", "stats_import_only_peak_rss_mib",
    }
    assert expected <= set(figures)
    assert sum(k.startswith("stats_") and k.endswith("_chips_seconds") for k in figures) == 2
    assert sum(k.startswith("stats_") and k.endswith("_chips_peak_rss_mib") for k in figures) == 2
    for key, value in figures.items():
        assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)
        if key.startswith("test_iou_"):
            # Two epochs on a few tiny chips may well predict all background: IoU 0 is valid.
            assert 0.0 <= value <= 1.0, (key, value)
        else:
            assert value > 0, (key, value)
    assert "train_speed_ratio_default_over_baseline" in proc.stdout  # the table and JSON print


def test_gpu_mode_dry_run_on_the_cpu_reports_every_variant(tmp_path):
    """``--gpu --device cpu``: the GPU mode's code with tiny sizes; compile skipped, utilisation unavailable."""
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, "benchmarks/benchmark.py", "--gpu", "--device", "cpu", "--json", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    gpu = json.loads(out.read_text())["gpu"]
    assert list(gpu["variants"]) == ["bf16", "bf16_fast", "seed_recipe", "bf16_compile_fast", "fp32"]
    assert "skipped" in gpu["variants"]["bf16_compile_fast"]
    for name in ("fp32", "bf16", "bf16_fast", "seed_recipe"):
        v = gpu["variants"][name]
        assert v["bare_step"]["images_per_second"] > 0 and v["train"]["images_per_second"] > 0
        assert math.isclose(v["train_over_bare"], v["train"]["images_per_second"] / v["bare_step"]["images_per_second"])
        assert v["train"]["utilisation_fit"]["samples"] == 0 and v["train"]["utilisation_fit"]["note"] == "unavailable"
    assert gpu["variants"]["fp32"]["train"]["precision"] == "32-true"
    assert gpu["variants"]["bf16"]["train"]["precision"] == "bf16-mixed"
    assert gpu["variants"]["bf16"]["config"]["deterministic"] and not gpu["variants"]["bf16_fast"]["config"]["deterministic"]
    assert gpu["variants"]["seed_recipe"]["bare_step"]["batch_size"] == 32
    assert gpu["variants"]["fp32"]["train"]["batch_size"] == gpu["variants"]["fp32"]["bare_step"]["batch_size"]
    assert "train() img/s" in proc.stdout and "unavailable" in proc.stdout


def test_gpu_mode_without_cuda_exits_non_zero_with_a_clear_message():
    import torch

    if torch.cuda.is_available():
        return  # a GPU machine runs the real mode instead (benchmarks/gpu_check.sh)
    proc = subprocess.run([sys.executable, "benchmarks/benchmark.py", "--gpu"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert "--gpu needs a CUDA GPU" in proc.stderr and "--device cpu" in proc.stderr


def test_utilisation_sampler_reads_nvidia_smi_lines(tmp_path, monkeypatch):
    """No GPU here: a stand-in ``nvidia-smi`` prints what the real one prints with
    ``--format=csv,noheader,nounits -lms 200`` (pynvml is not installed on this machine)."""
    import importlib.util
    import time

    if importlib.util.find_spec("pynvml") is not None:
        return  # the sampler would use pynvml, not the command line
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\nwhile true; do echo '87, 40960'; echo '93, 41000'; sleep 0.05; done\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from gpu_mode import UtilisationSampler
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    sampler = UtilisationSampler()
    sampler.start()
    time.sleep(0.5)
    sampler.stop()
    summary = sampler.summary()
    assert summary["source"] == "nvidia-smi" and summary["samples"] >= 2
    assert 87 <= summary["mean_percent"] <= 93 and summary["max_memory_mib"] == 41000
    assert UtilisationSampler(enabled=False).summary()["note"] == "unavailable"
