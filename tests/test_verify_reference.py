"""The reference forward (bitconv.verify.reference) computes exactly what transformers computes.

Bounds, per case (max |Δ| of float32-converted bf16 logits, eager attention):
- live transformers, run with `torch.compiler.set_stance("force_eager")` (no compile time in the suite): master
  online, packed autobitlinear (ActQuant/WeightQuant agree between eager and compiled), packed bitlinear with the
  eager BitLinear emulation, plain master, and 1bitLLM's graph (run by transformers' BitNet class with silu and the
  sub-norms renamed): 0. The same arithmetic in the same op order and dtypes on the same CPU, so no rounding may
  differ.
- golden logits (transformers 5.23, torch.compile on, recorded on a CPU whose oneDNN bf16 GEMM kernel is the
  AVX512-BF16 one): master online, plain master, packed autobitlinear and packed bitlinear (compiled-mode BitLinear
  emulation). Run with that kernel (`ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16`, in a subprocess, on any CPU that has it):
  0. Run with the machine's own kernel: every logit within 1 bf16 ulp of its recorded value, at most
  `GOLDEN_MAX_FLIPS` of the 8192 logits differing at all.
- BitLinear's two modes differ from each other (not a bound, a sanity check that the emulation switch matters).

Why the golden needs a bound on other CPUs: torch runs every bf16 matmul on the CPU through oneDNN, which picks its
kernel by CPU (AMX tiles on Sapphire Rapids and later, AVX512-BF16, AVX2, ...). Each kernel sums the K float32
products of a dot product in its own blocking order, so two kernels' float32 sums differ in their last bits (a
float32 ulp is 2^-16 of a bf16 ulp), and where a sum lies that close to a bf16 rounding boundary the bf16 result
differs by exactly 1 ulp. transformers itself gives those same flipped values on such a CPU (checked: on an AMX CPU
transformers 5.24, eager and compiled, 1 and 2 threads, equals the reference bit for bit, and both differ from the
golden in logit [0, 5, 329] of master online, 0.030029 vs 0.030151, the lm_head GEMM). Measured on the golden input:
AMX kernel: 1 logit of master online flips; AVX2 kernel: 1 logit each of plain master and packed bitlinear;
AVX512-BF16: none. Thread count changes nothing. A flip in an earlier layer could move more than one logit by more;
that has not been seen, and the bound would then fail rather than pass silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bitconv import pipeline
from bitconv.core.errors import UsageError
from bitconv.sources import open_source
from bitconv.verify.reference import RefConfig, Weights, forward, reference_logits

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent

ONLINE = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "online"}
IDS = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(11))


def _hf_logits(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16,
                                                              attn_implementation="eager").eval()
    with torch.no_grad(), torch.compiler.set_stance("force_eager"):
        return model(ids).logits.float()


def _with_config(src: Path, dst: Path, edit) -> Path:
    """A folder with `src`'s files linked and its config.json edited."""
    dst.mkdir()
    cfg = json.loads((src / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    for f in src.iterdir():
        if f.name != "config.json":
            os.symlink(f, dst / f.name)
    return dst


@pytest.fixture(scope="session")
def variants(models, tmp_path_factory):
    """(arch, tied, variant) -> (folder transformers loads, folder the reference reads, linear mode)."""
    base = tmp_path_factory.mktemp("refvariants")
    cache: dict = {}

    def get(arch: str, tied: bool | None, variant: str):
        key = (arch, tied, variant)
        if key in cache:
            return cache[key]
        master = models(arch, tied=tied)
        d = base / f"{arch}-{tied}-{variant}"
        if variant == "online":
            cache[key] = (_with_config(master, d, lambda c: c.update(quantization_config=ONLINE)), master, "online")
        elif variant == "plain":
            cache[key] = (_with_config(master, d, lambda c: c.pop("quantization_config", None)), master, "plain")
        else:
            pipeline.pack_hf(master, d, linear_class=variant)
            cache[key] = (d, d, None)
        return cache[key]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("arch,tied", [("bitnet-2b4t", True), ("bitnet-2b4t", False), ("llama-bitnet", None)])
@pytest.mark.parametrize("variant", ["online", "autobitlinear", "bitlinear"])
def test_reference_equals_transformers(variants, arch, tied, variant):
    hf_dir, ref_dir, mode = variants(arch, tied, variant)
    want = _hf_logits(hf_dir, IDS)
    got = reference_logits(open_source(ref_dir), IDS, mode, bitlinear="eager")
    assert torch.equal(got, want), float((got - want).abs().max())


@pytest.mark.slow
def test_plain_master_equals_dense_transformers(variants):
    hf_dir, ref_dir, mode = variants("bitnet-2b4t", True, "plain")
    assert torch.equal(reference_logits(open_source(ref_dir), IDS, mode), _hf_logits(hf_dir, IDS))


@pytest.mark.slow
def test_1bitllm_graph_equals_transformers_bitnet_with_silu(models, tmp_path):
    """1bitLLM = BitNet's graph with silu and other sub-norm names: transformers' BitNet class runs it."""
    master = models("1bitllm")
    d = tmp_path / "as-bitnet"
    d.mkdir()
    renames = {"inner_attn_ln": "attn_sub_norm", "ffn_layernorm": "ffn_sub_norm"}
    tensors = {k: v for k, v in load_file(master / "model.safetensors").items()}
    for old, new in renames.items():
        tensors = {k.replace(f".{old}.", f".{new}."): v for k, v in tensors.items()}
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    cfg = json.loads((master / "config.json").read_text())
    cfg.update(architectures=["BitNetForCausalLM"], model_type="bitnet", quantization_config=ONLINE)
    (d / "config.json").write_text(json.dumps(cfg))
    got = reference_logits(open_source(master), IDS, "online")
    assert torch.equal(got, _hf_logits(d, IDS))


GOLDEN_CASES = {
    "master_online_autobitlinear": ("input", "online"),
    "master_plain_bf16": ("input", "plain"),
    "packed_autobitlinear_offline": ("packed-autobitlinear-offline", None),
    "packed_bitlinear": ("packed-bitlinear", None),
}


GOLDEN_MAX_FLIPS = 8  # of 8192 golden logits: 1 seen per case at most (AMX, AVX2 kernels), 1/1024 allowed
RECORDING_ISA = "AVX512_CORE_BF16"  # the oneDNN kernel of the machine the golden logits were recorded on


def _bf16_ulp(x: torch.Tensor) -> torch.Tensor:
    """One bf16 ulp of each value (8 significant bits): 2^(floor(log2 |x|) - 7); normal range only."""
    return torch.exp2(torch.floor(torch.log2(x.abs().clamp(min=2.0**-126))) - 7)


def _golden_logits(golden_hf: Path, key: str) -> tuple[torch.Tensor, torch.Tensor]:
    ref = load_file(golden_hf / "reference_logits.safetensors")
    folder, mode = GOLDEN_CASES[key]
    return reference_logits(open_source(golden_hf / folder), ref["input_ids"], mode), ref[key]


@pytest.mark.parametrize("key", GOLDEN_CASES)
def test_reference_within_one_ulp_of_golden_logits(golden_hf, key):
    """transformers' own logits, recorded with torch.compile on, against this CPU's bf16 GEMM kernel: each logit
    equal or 1 bf16 ulp away, at most GOLDEN_MAX_FLIPS flipped (see the module docstring)."""
    got, want = _golden_logits(golden_hf, key)
    diff = (got - want).abs()
    flipped = int((diff > 0).sum())
    assert bool((diff <= _bf16_ulp(want)).all()), f"a logit moved by more than 1 bf16 ulp: max |Δ| {float(diff.max())}"
    assert flipped <= GOLDEN_MAX_FLIPS, f"{flipped} logits differ from the golden (bound {GOLDEN_MAX_FLIPS})"


def _has_cpu_flag(flag: str) -> bool:
    try:
        return any(flag in line.split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("flags"))
    except OSError:
        return False


@pytest.mark.skipif(not _has_cpu_flag("avx512_bf16"), reason="the golden's GEMM kernel (AVX512-BF16) needs a CPU "
                    "with avx512_bf16; the 1-ulp bound above still runs")
@pytest.mark.slow
def test_reference_equals_golden_logits_on_the_recording_kernel(golden_hf):
    """With oneDNN held to the recording machine's kernel, every golden case is bit-identical (bound 0)."""
    script = ("import json, sys, torch\n"
              "from pathlib import Path\n"
              "from tests.test_verify_reference import GOLDEN_CASES, _golden_logits\n"
              "out = {}\n"
              "for key in GOLDEN_CASES:\n"
              "    got, want = _golden_logits(Path(sys.argv[1]), key)\n"
              "    out[key] = float((got - want).abs().max()) if got.shape == want.shape else -1.0\n"
              "print(json.dumps(out))\n")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": RECORDING_ISA, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", script, str(golden_hf)], env=env, cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    diffs = json.loads(run.stdout.strip().splitlines()[-1])
    assert diffs == {key: 0.0 for key in GOLDEN_CASES}, diffs


def test_bitlinear_emulation_modes_differ(golden_hf):
    ref = load_file(golden_hf / "reference_logits.safetensors")
    eager = reference_logits(open_source(golden_hf / "packed-bitlinear"), ref["input_ids"], bitlinear="eager")
    assert not torch.equal(eager, ref["packed_bitlinear"])


def test_lockstep_variants_equal_separate_runs(models):
    """Running several models layer by layer in lockstep (shared cache) changes nothing."""
    ck = open_source(models("bitnet-2b4t", tied=False))
    cfg = RefConfig.from_hf(ck.config)
    online, plain = forward(cfg, [Weights(ck, "online"), Weights(ck, "plain")], IDS)
    assert torch.equal(online, reference_logits(ck, IDS, "online"))
    assert torch.equal(plain, reference_logits(ck, IDS, "plain"))


def test_lm_head_chunks_do_not_change_logits(models, monkeypatch):
    from bitconv.verify import reference

    ck = open_source(models("bitnet-2b4t", tied=False))
    whole = reference_logits(ck, IDS)
    monkeypatch.setattr(reference, "LM_HEAD_CHUNK", 100)
    assert torch.equal(reference_logits(ck, IDS), whole)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.update(architectures=["GPT2LMHeadModel"]), "reference forward knows"),
    (lambda c: c.update(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "rope_type"),
    (lambda c: c.update(hidden_act="gelu"), "hidden_act"),
    (lambda c: c.pop("hidden_size"), "hidden_size"),
])
def test_unsupported_configs_are_refused(models, edit, match):
    cfg = json.loads((models() / "config.json").read_text())
    edit(cfg)
    with pytest.raises(UsageError, match=match):
        RefConfig.from_hf(cfg)


def test_token_ids_out_of_range_are_refused(models):
    ck = open_source(models())
    with pytest.raises(UsageError, match="token ids"):
        reference_logits(ck, torch.tensor([[0, 512]]))


def test_online_mode_needs_a_master(models, tmp_path):
    pipeline.quantize(models(), tmp_path / "t")
    with pytest.raises(UsageError, match="needs a bf16-master or nanotron"):
        Weights(open_source(tmp_path / "t"), "online")


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
def test_online_weight_from_ternarization_equals_weight_quant(compute):
    """The fast online path (codes * bf16(scale) from `ternarize`) gives WeightQuant's bf16 values exactly."""
    from bitconv.quant import ternarize
    from bitconv.verify.reference import WEIGHT_QUANT, online_weight

    g = torch.Generator().manual_seed(3)
    for shape, std in (((64, 96), 0.02), ((256, 128), 1.0), ((33, 40), 1e-7)):
        w = (torch.randn(shape, generator=g) * std).to(torch.bfloat16)
        assert torch.equal(online_weight(ternarize(w, compute)), WEIGHT_QUANT[compute](w))


def _parity_logits(ref_dir: Path, out_dir: Path, monkeypatch, memo: bool):
    """Logits of parity's models (REF online, OUT, the floor model, the plain master) and the memo's counts."""
    from bitconv.verify import parity as parity_mod
    from bitconv.verify import reference

    got: dict = {}
    real_forward, real_memo = parity_mod.forward, reference.LinearMemo

    class Counted(real_memo):
        def __init__(self) -> None:
            super().__init__()
            got["memo"] = self

    def spy(cfg, models, ids, progress=None):
        got["logits"] = real_forward(cfg, models, ids, progress)
        return got["logits"]

    monkeypatch.setattr(reference, "MEMO", memo)
    monkeypatch.setattr(reference, "LinearMemo", Counted)
    monkeypatch.setattr(parity_mod, "forward", spy)
    parity_mod.parity(open_source(out_dir), open_source(ref_dir), IDS)
    return got["logits"], got.get("memo")


@pytest.mark.parametrize("edit", ["exact", "scale-of-one-projection"])
def test_shared_projection_results_change_no_logit(models, tmp_path, monkeypatch, edit):
    """parity's models share a projection's result only where the arithmetic, the weights and the input are bit
    for bit the same (`LinearMemo`): every model's logits equal a run that computes each projection itself. OUT
    packed from REF is the floor model, so the floor model then costs no matmul; an OUT whose one scale differs
    shares nothing from that projection on."""
    master = models("bitnet-2b4t", tied=False)
    out = tmp_path / "out"
    pipeline.pack_hf(master, out)
    if edit != "exact":
        f = out / "model.safetensors"
        ts = load_file(f)
        ts["model.layers.1.mlp.down_proj.weight_scale"] = ts["model.layers.1.mlp.down_proj.weight_scale"] * 2
        save_file(ts, f, metadata={"format": "pt"})
    with_memo, memo = _parity_logits(master, out, monkeypatch, True)
    alone, none = _parity_logits(master, out, monkeypatch, False)
    assert none is None and len(with_memo) == len(alone) == 4
    for a, b in zip(with_memo, alone):
        assert torch.equal(a, b)
    n_proj = 7 * RefConfig.from_hf(open_source(master).config).n_layers
    if edit == "exact":
        assert torch.equal(with_memo[1], with_memo[2])  # OUT == the floor model
        assert memo.hits == n_proj and memo.runs == 3 * n_proj
    else:
        assert not torch.equal(with_memo[1], with_memo[2])
        assert 0 < memo.hits < n_proj  # shared up to layer 1's down_proj, not after


@pytest.mark.parametrize("pure", ["0", "1"])
def test_bits_equal_compares_bits_not_values(pure, monkeypatch):
    """The memo shares a result only for bit-equal weights and inputs: -0 differs from +0, NaN equals itself,
    dtype and shape count; non-contiguous tensors compare by their values' bits (C memcmp and torch alike)."""
    from bitconv.verify.reference import bits_equal

    monkeypatch.setenv("BITCONV_PURE_PYTHON", pure)
    a = torch.tensor([[0.0, 1.0], [float("nan"), -2.5]], dtype=torch.bfloat16)
    assert bits_equal(a, a.clone())
    assert not bits_equal(a, torch.tensor([[-0.0, 1.0], [float("nan"), -2.5]], dtype=torch.bfloat16))
    assert not bits_equal(a, a.float()) and not bits_equal(a, a.reshape(4))
    assert bits_equal(a.t(), a.t().contiguous()) and not bits_equal(a.t(), a)
    b = a.clone()
    b[1, 1] = -2.0
    assert not bits_equal(a, b)
    assert bits_equal(torch.tensor(3.0), torch.tensor(3.0))
