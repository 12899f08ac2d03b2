"""The benchmark (spg.bench): FLOP accounting, the naive reference step, the report and its files."""

import copy
import csv
import io
import json

import pytest
import torch

from spg.bench import TINY, main
from spg.bench.report import CSV_HEADER, RATIO_MEASUREMENTS, ROW_FIELDS, merge_gpu
from spg.bench.sae_bench import NaiveSAETrainer, bench_sae_step, matmul_flops, sae_step_flops
from spg.bench.timing import Timing, fit_exponent, interleaved, paired_exponent, paired_ratio
from spg.sae import SAEConfig, SAETrainer, TopKSAE


def test_flop_accounting():
    # 4 C d per token: encoder product (2 C d) + its gradient (2 C d)
    assert sae_step_flops(n_tokens=10, d=464, n_atoms=2048) == 10 * 4 * 2048 * 464
    assert matmul_flops(10, 464, 2048) == 2 * 10 * 464 * 2048
    assert sae_step_flops(7, 3, 5) == 2 * matmul_flops(7, 3, 5)
    r = bench_sae_step(n_tokens=32, d=8, n_atoms=16, k=2, repeats=1)
    t = {k: v["median_s"] for k, v in r["timings"].items()}
    assert r["flop_per_token"] == 4 * 16 * 8
    assert r["matmul_gflops"] == pytest.approx(2 * 32 * 8 * 16 / t["matmul"] / 1e9)
    assert r["fast_gflops"] == pytest.approx(4 * 16 * 8 * 32 / t["fast"] / 1e9)
    assert r["fast_tokens_s"] == pytest.approx(32 / t["fast"])
    assert r["fast_vs_matmul"] == pytest.approx(r["fast_gflops"] / r["matmul_gflops"])
    assert r["speedup_vs_naive"] == pytest.approx(t["naive"] / t["fast"])


def _pair(dead: int, aux_k: int, seed: int = 0):
    torch.manual_seed(seed)
    cfg = SAEConfig(n_atoms=48, k=5, aux_k=aux_k, dead_after_tokens=100)
    sae = TopKSAE(12, 48, 5, seed=seed)
    with torch.no_grad():  # atoms off the unit sphere: the normalisation's gradient matters
        sae.dictionary.mul_(torch.rand(48, 1) + 0.5)
        if dead:  # small encoder rows: these latents never reach the top k, so they stay dead
            sae.encoder[48 - dead:] *= 0.01
    fast, naive = SAETrainer(sae, cfg), NaiveSAETrainer(copy.deepcopy(sae), cfg)
    for trainer in (fast, naive):
        trainer.tokens_since_fired[48 - dead:] = 10**6  # dead unless they fire in this batch
    return fast, naive


@pytest.mark.parametrize("dead,aux_k", [(0, 8), (20, 8), (20, 64)])
def test_naive_step_has_the_same_loss_and_gradients_as_the_real_one(dead, aux_k):
    fast, naive = _pair(dead, aux_k)
    x = torch.randn(40, 12) + 0.3
    mse_f, aux_f = fast.backward(x)
    mse_n, aux_n = naive.backward(x)
    assert float(mse_f) == pytest.approx(float(mse_n), rel=1e-5)
    assert float(aux_f) == pytest.approx(float(aux_n), rel=1e-5, abs=1e-8)
    assert (float(aux_f) > 0) == bool(dead)
    assert torch.equal(fast.tokens_since_fired, naive.tokens_since_fired)
    for name in ("encoder", "dictionary"):
        g_f, g_n = getattr(fast.sae, name).grad, getattr(naive.sae, name).grad
        assert torch.allclose(g_f, g_n, rtol=1e-4, atol=1e-6 * float(g_n.abs().max())), name
        assert float(g_n.abs().max()) > 0


def test_naive_and_real_steps_train_the_same_sae():
    fast, naive = _pair(dead=10, aux_k=6, seed=1)
    x = torch.randn(64, 12)
    for _ in range(5):
        a, b = fast.step(x), naive.step(x)
        assert a.mse == pytest.approx(b.mse, rel=1e-4) and a.n_dead == b.n_dead
    for name in ("encoder", "dictionary"):
        assert torch.allclose(getattr(fast.sae, name), getattr(naive.sae, name), atol=1e-5)


def test_interleaved_timing_and_exponent():
    calls = []
    t = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4
    assert len(t["a"].seconds) == 3 and t["a"].median >= 0
    assert fit_exponent([1, 2, 4], [3.0, 6.0, 12.0]) == pytest.approx(1.0)
    assert fit_exponent([1, 2, 4], [1.0, 4.0, 16.0]) == pytest.approx(2.0)
    a, b = Timing(seconds=[1.0, 10.0, 2.0]), Timing(seconds=[2.0, 20.0, 1.0])
    assert paired_ratio(a, b) == pytest.approx(0.5)  # per-repeat ratios 0.5, 0.5, 2
    sizes = [Timing(seconds=[1.0, 1.0, 5.0]), Timing(seconds=[2.0, 2.0, 5.0]), Timing(seconds=[4.0, 9.0, 5.0])]
    assert paired_exponent([1, 2, 4], sizes) == pytest.approx(1.0)  # per-repeat exponents 1, 1.58, 0


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny benchmark run (the --quick code path at toy sizes): printed output and files."""
    out = tmp_path_factory.mktemp("bench")
    stream = io.StringIO()
    assert main(config=TINY, out=out, work_dir=tmp_path_factory.mktemp("work"), stream=stream) == 0
    return stream.getvalue(), out


def test_output_is_one_table_with_every_ratio(tiny_run):
    text, _ = tiny_run
    header = "  ".join(CSV_HEADER[:2])
    assert sum(line.startswith(header.split("  ")[0]) and "measurement" in line for line in text.splitlines()) == 1
    for measurement in RATIO_MEASUREMENTS:
        assert measurement in text, measurement
    assert "speed only: random weights" not in text  # TINY skips the paper backbones


def test_result_files_schema(tiny_run):
    _, out = tiny_run
    data = json.loads((out / "bench.json").read_text())
    assert data["schema_version"] == 1 and data["mode"] == "tiny"
    for key in ("cpu_model", "logical_cpus", "cpus_available", "torch", "torch_threads", "load_average_start"):
        assert key in data["machine"], key
    for key in ("extraction", "sae", "sae_auxk", "guides", "scaling", "memory", "paper_backbones"):
        assert key in data["results"], key
    assert set(data["results"]["scaling"]) >= {"extract", "sae", "guides"}
    for r in data["rows"]:
        assert set(r) == set(ROW_FIELDS)
    with_ratio = {r["measurement"] for r in data["rows"] if r["ratio"] is not None}
    assert set(RATIO_MEASUREMENTS) <= with_ratio
    assert data["ratios"] == list(RATIO_MEASUREMENTS)
    with open(out / "bench.csv", newline="") as fh:
        table = list(csv.reader(fh))
    assert tuple(table[0]) == CSV_HEADER and len(table) == len(data["rows"]) + 1
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "bench_machine.csv", newline="") as fh:
        machine = list(csv.reader(fh))
    assert machine[0] == ["item", "value"] and any(r[0] == "CPU" for r in machine[1:])


def test_gpu_run_merges_as_its_own_section(tiny_run, tmp_path):
    _, out = tiny_run
    results = tmp_path / "results"
    results.mkdir()
    for name in ("bench.json", "bench.csv"):
        (results / name).write_bytes((out / name).read_bytes())
    gpu_row = {"stage": "paper backbones (GPU)", "measurement": "DINOv3 ViT-L/16 @448 forward, batch 16, bfloat16",
               "value": 123.0, "unit": "img/s", "compared_with": "speed only: random weights", "ratio": None,
               "target": "", "met": None}
    gpu = {"schema_version": 1, "mode": "paper-backbones", "machine": {"device": "cuda", "gpu_name": "X"},
           "results": {"paper_backbones": []}, "rows": [gpu_row]}
    (tmp_path / "gpu.json").write_text(json.dumps(gpu))
    merge_gpu(results, tmp_path / "gpu.json")
    merged = json.loads((results / "bench.json").read_text())
    assert merged["gpu"]["machine"]["gpu_name"] == "X" and merged["gpu"]["rows"] == [gpu_row]
    assert merged["rows"] == json.loads((out / "bench.json").read_text())["rows"]  # CPU rows untouched
    assert "DINOv3 ViT-L/16 @448 forward, batch 16, bfloat16" in (results / "bench.csv").read_text()
    assert (results / "bench.png").exists()
    gpu["machine"]["device"] = "cpu"
    (tmp_path / "cpu.json").write_text(json.dumps(gpu))
    with pytest.raises(ValueError, match="not a GPU run"):
        merge_gpu(results, tmp_path / "cpu.json")


def test_cli_passes_the_bench_flags(monkeypatch):
    import spg.bench
    from spg.__main__ import main as cli

    seen = {}
    monkeypatch.setattr(spg.bench, "main", lambda **kw: seen.update(kw) or 0)
    assert cli(["bench", "--paper-backbones-only", "--device", "cuda", "--out", "x"]) == 0
    assert seen == {"quick": False, "out": "x", "paper_backbones_only": True, "device": "cuda",
                    "merge_gpu": None, "work_dir": None}


@pytest.mark.parametrize("binary", [True, False])
def test_hand_written_focal_dice_backward_matches_autograd_of_the_formulas(binary):
    from spg.guides import dice_pair_loss, focal_dice_losses, focal_loss

    gen = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 12, 12, generator=gen, dtype=torch.float64)
    masks = (masks > 0.7).double() if binary else masks
    a = torch.rand(3, 12, 12, generator=gen, dtype=torch.float64).requires_grad_()
    focal, dice = focal_dice_losses(a, masks)
    assert focal.item() == pytest.approx(focal_loss(a, masks).item(), rel=1e-12)
    assert float(dice) == pytest.approx(float(dice_pair_loss(a, masks)), rel=1e-12)
    (g,) = torch.autograd.grad(0.3 * focal + 1.7 * dice, a)
    (g_ref,) = torch.autograd.grad(0.3 * focal_loss(a, masks) + 1.7 * dice_pair_loss(a, masks), a)
    assert torch.allclose(g, g_ref, rtol=1e-10, atol=1e-14)


def test_matrix_upsampling_and_blur_equal_interpolate_and_gaussian_blur():
    import torch.nn.functional as F
    from torchvision.transforms.functional import gaussian_blur

    from spg.guides import SPGHead, anomaly_maps, blur_maps

    gen = torch.Generator().manual_seed(0)
    head = SPGHead(F.normalize(torch.randn(20, 8, generator=gen), dim=1), torch.ones(20, dtype=torch.bool),
                   theta=torch.rand(4, 20, generator=gen))
    patches = torch.randn(2, 5, 5, 8, generator=gen)
    grid = head.anomaly_grid(patches)
    up = F.interpolate(grid[:, None], size=(40, 40), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(head.anomaly_map(patches, 40), up, atol=1e-6)
    blurred = gaussian_blur(up[:, None], [2 * 8 + 1] * 2, [2.0, 2.0])[:, 0]  # torchvision: the former blur
    assert torch.allclose(blur_maps(up, 2.0), blurred, atol=1e-6)
    assert torch.allclose(anomaly_maps(head, patches, 40, 2.0), blurred, atol=1e-6)
