"""The grouped Triton experts kernel (engine/moe_triton.py) against the dequantize reference.

Without CUDA the kernel runs on the CPU under Triton's interpreter. Triton makes each @jit
function interpreted or compiled when it is decorated, reading TRITON_INTERPRET then, and
Triton may have been imported already (torch._dynamo imports it, e.g. under diffusers). So
this module loads its own copy of engine/moe_triton.py with TRITON_INTERPRET=1 and restores
the variable at once; the kernel calls only Triton builtins, none of Triton's own jit helpers
(tl.zeros, tl.sigmoid) that were decorated earlier. A fixture sets the variable again and puts
the copy in sys.modules (for QuantExperts) while this module's tests run, and only then. With
CUDA the same tests run the compiled kernel on the GPU. The source is also compiled for sm80
and sm90 in a subprocess (Triton's own ptxas, no GPU needed), which checks what the
interpreter does not.
"""

import importlib.util
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from engine import quant

if importlib.util.find_spec("triton") is None:
    pytest.skip("Triton is not installed", allow_module_level=True)
CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def kernel_module():
    """engine.moe_triton itself on CUDA; without CUDA a copy decorated for the interpreter."""
    if CUDA:
        return importlib.import_module("engine.moe_triton")
    import triton.language  # noqa: F401  (Triton's own helpers: never interpreted, as in the app)

    name, path = "engine.moe_triton", Path(quant.__file__).with_name("moe_triton.py")
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path))
    with pytest.MonkeyPatch.context() as patch:  # undone at the end of the block
        patch.setenv("TRITON_INTERPRET", "1")
        patch.setitem(sys.modules, name, module)  # where @dataclass looks while it runs
        module.__spec__.loader.exec_module(module)
    return module


moe_triton = kernel_module()
assert moe_triton.INTERPRETED != CUDA


@pytest.fixture(autouse=True, scope="module")
def interpreter():
    """While this module's tests run: TRITON_INTERPRET set (the interpreter reads it as it
    runs too) and the interpreted copy in sys.modules, where QuantExperts imports it."""
    with pytest.MonkeyPatch.context() as patch:
        if not CUDA:
            patch.setenv("TRITON_INTERPRET", "1")
            patch.setitem(sys.modules, "engine.moe_triton", moe_triton)
        yield


E, D, I = 8, 64, 64  # experts, hidden, expert width: small shapes, the interpreter is slow
GROUP = 32  # every row holds two int4 groups
# fp32 activations: the kernel and the reference differ in summation order only (measured
# 3e-7, against the loop 5e-7). bf16: the kernel rounds the weights, h and the down output to
# bf16, the fp32 reference does not (measured int8 0.0067, int4 0.012; against the loop, which
# rounds too, 0.007 and 0.011).
BOUND = {torch.float32: 1e-5, torch.bfloat16: 0.02}


def experts(bits: int, seed: int = 0) -> quant.QuantExperts:
    """Random quantized experts in the neutral format (not packed), on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    module = quant.QuantExperts(E, D, I, bits, GROUP)
    for stack in module.children():
        w = torch.randn(E, stack.n, stack.k, generator=generator) * 0.05
        stack.fill(quant.quantize(w, bits, GROUP))
    return module


def reference(module: quant.QuantExperts, x, weights, chosen):
    """sum_k weights * down(silu(gate x) * up x), one assignment at a time, dequantized fp32."""
    out = torch.zeros(x.shape[0], D)
    for t, k in torch.cartesian_prod(*map(torch.arange, chosen.shape)).reshape(-1, 2).tolist():
        gate, up, down = (s.dequantized(int(chosen[t, k])) for s in module.children())
        xf = x[t].float().cpu()
        out[t] += weights[t, k].item() * (down @ (F.silu(gate @ xf) * (up @ xf)))
    return out


def routing(tokens: int, top: int, seed: int = 0):
    """Uneven routing: expert 0 takes every token's first slot (more rows than a block of 16),
    the others are drawn from 1..4 with a skew, and experts 5..7 are never hit."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.zeros(tokens, top, dtype=torch.int64)
    for t in range(tokens):
        others = torch.multinomial(torch.tensor([8.0, 4, 2, 1]), top - 1, generator=generator)
        chosen[t, 1:] = others + 1
    weights = torch.rand(tokens, top, generator=generator)
    return weights / weights.sum(-1, keepdim=True), chosen


def on_device(*tensors):
    return tuple(t.to(DEVICE) for t in tensors)


def relative_error(y, ref):
    return ((y.float().cpu() - ref).norm() / ref.norm()).item()


# ---- the padded layout ---------------------------------------------------------------------------


@pytest.mark.parametrize("tokens, top, block_m", [(24, 3, 16), (1, 3, 16), (40, 2, 4)])
def test_blocks_cover_each_assignment_once_within_the_bound(tokens, top, block_m):
    _, chosen = routing(tokens, top)
    rows, block_expert = (t.cpu() for t in moe_triton.expert_blocks(chosen.to(DEVICE), E, block_m))
    count = tokens * top
    assert rows.shape == (moe_triton.max_blocks(count, E, block_m), block_m)
    real = rows < count
    assert sorted(rows[real].tolist()) == list(range(count))  # every assignment exactly once
    used = block_expert >= 0
    assert not real[~used].any()  # surplus blocks hold padding only
    assert used.sum() == sum(-(-int(n) // block_m) for n in torch.bincount(chosen.flatten()))
    assert used[: int(used.sum())].all()  # the surplus blocks come last
    for block, expert in enumerate(block_expert.tolist()):
        if expert >= 0:  # each block's rows are its expert's, padding at the end only
            picked = rows[block][real[block]]
            assert (chosen.flatten()[picked] == expert).all()
            assert real[block][: len(picked)].all()


# ---- the kernel against the dequantize reference ------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("tokens", [24, 1])
def test_kernel_matches_the_dequantize_reference(bits, dtype, tokens):
    module = experts(bits)
    weights, chosen = routing(tokens, 3, seed=tokens)
    x = torch.randn(tokens, D, generator=torch.Generator().manual_seed(1)).to(dtype)
    if tokens > 1:  # expert 0's rows span two blocks
        assert moe_triton.block_rows(chosen.numel(), E) < int((chosen == 0).sum())
    ref = reference(module, x, weights, chosen)
    module.to(DEVICE)
    out = moe_triton.moe_forward(*on_device(x, weights, chosen), *module.children())
    assert out.dtype == torch.float32 and out.shape == (tokens, D)
    assert relative_error(out, ref) < BOUND[dtype]


def test_kernel_runs_block_fp8_experts():
    """FP8 E4M3 with 128 x 128 block scales: widths that span two blocks and end mid-tile."""
    dim, width = 256, 160
    generator = torch.Generator().manual_seed(6)
    shapes = ((width, dim), (width, dim), (dim, width))
    stacks = [moe_triton.BlockFp8.quantize(torch.randn(4, n, k, generator=generator) * 0.05)
              for n, k in shapes]  # fmt: skip
    assert stacks[0].scale.shape == (4, 2, 2) and stacks[2].scale.shape == (4, 2, 2)
    weights, chosen = routing(6, 2, seed=6)
    chosen = chosen.clamp(max=3)
    x = torch.randn(6, dim, generator=generator)
    ref = torch.zeros(6, dim)
    for t, k in torch.cartesian_prod(torch.arange(6), torch.arange(2)).tolist():
        gate, up, down = (s.dequantized(int(chosen[t, k])) for s in stacks)
        ref[t] += weights[t, k] * (down @ (F.silu(gate @ x[t]) * (up @ x[t])))
    for s in stacks:
        s.qweight, s.scale = s.qweight.to(DEVICE), s.scale.to(DEVICE)
    out = moe_triton.moe_forward(*on_device(x, weights, chosen), *stacks)
    assert relative_error(out, ref) < 1e-5


def test_launch_shape_does_not_change_the_result():
    module = experts(4).to(DEVICE)
    weights, chosen = routing(20, 3, seed=7)
    x, weights, chosen = on_device(torch.randn(20, D), weights, chosen)
    default = moe_triton.moe_forward(x, weights, chosen, *module.children())
    narrow = moe_triton.Tiles(block_n=16, num_warps=2, num_stages=2)
    other = moe_triton.moe_forward(x, weights, chosen, *module.children(), tiles=narrow)
    torch.testing.assert_close(other, default, rtol=1e-5, atol=1e-6)


def test_every_fp8_code_decodes_exactly():
    """All 254 finite E4M3 codes (subnormals, both signs) read back through one projection:
    identity activations times the weight give the weight itself."""
    codes = torch.arange(256, dtype=torch.uint8)
    codes[codes & 0x7F == 0x7F] = 0  # the two NaN codes
    stack = moe_triton.BlockFp8(
        codes.view(1, 16, 16).view(torch.float8_e4m3fn), torch.ones(1, 1, 1)
    )
    rows, block_expert = moe_triton.expert_blocks(torch.zeros(16, 1, dtype=torch.int64), 1, 16)
    eye = torch.eye(16)
    stack.qweight, stack.scale = stack.qweight.to(DEVICE), stack.scale.to(DEVICE)
    out = moe_triton.expert_matmul(*on_device(eye, rows, block_expert), (stack,), 1, 16, 16)
    assert torch.equal(out.cpu().T, codes.view(1, 16, 16).view(torch.float8_e4m3fn)[0].float())


def test_kernel_with_no_tokens():
    module = experts(4).to(DEVICE)
    x, weights, chosen = on_device(torch.zeros(0, D), torch.zeros(0, 3), torch.zeros(0, 3).long())
    assert moe_triton.moe_forward(x, weights, chosen, *module.children()).shape == (0, D)


def test_kernel_rejects_stacks_that_do_not_fit_together():
    int8, int4 = experts(8), experts(4)
    weights, chosen = routing(4, 2)
    x = torch.zeros(4, D)
    with pytest.raises(ValueError, match="same bits"):
        moe_triton.moe_forward(x, weights, chosen, int8.gate_proj, int4.up_proj, int8.down_proj)
    with pytest.raises(ValueError, match="do not match"):
        narrow = quant.QuantExperts(E, D, I // 2, 8, GROUP).down_proj  # [E, D, I/2]
        moe_triton.moe_forward(x, weights, chosen, int8.gate_proj, int8.up_proj, narrow)


# ---- QuantExperts: the Triton path against the loop ---------------------------------------------

# The loop's int4 kernel on CUDA (tinygemm) takes bf16 activations only
DTYPES = [torch.bfloat16] if CUDA else [torch.float32, torch.bfloat16]


def packed(bits: int, kernel: str, dtype) -> quant.QuantExperts:
    return quant.pack_model(experts(bits).to(DEVICE), dtype, experts_kernel=kernel)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bits", [8, 4])
def test_quant_experts_triton_path_matches_the_loop(bits, dtype):
    loop, fused = packed(bits, "loop", dtype), packed(bits, "triton", dtype)
    assert (loop.kind, fused.kind) == ("loop", "triton")
    kinds = {s.kind for s in loop.children()}
    assert kinds == {"int8" if bits == 8 else "cpu"} if not CUDA else "triton" not in kinds
    weights, chosen = routing(24, 3, seed=2)
    x = torch.randn(24, D, generator=torch.Generator().manual_seed(3)).to(dtype)
    inputs = on_device(x, weights, chosen)
    assert relative_error(fused(*inputs), loop(*inputs).cpu()) < BOUND[dtype]


def test_triton_stacks_keep_the_neutral_buffers_expert_first():
    module = packed(4, "triton", torch.bfloat16)
    for stack in module.children():
        buffers = dict(stack.named_buffers())
        assert set(buffers) == {"qweight", "scale", "minv"}
        assert all(b.shape[0] == E for b in buffers.values())
    assert set(module.state_dict()) == set(experts(4).state_dict())  # saves as it loaded


def test_reference_flag_sends_triton_stacks_through_the_loop():
    module = packed(8, "triton", torch.float32)
    quant.set_reference(module, True)
    assert module.kind == "loop"
    weights, chosen = routing(6, 2)
    x = torch.randn(6, D)
    ref = reference(module.cpu(), x, weights, chosen)
    assert relative_error(module.to(DEVICE)(*on_device(x, weights, chosen)), ref) < 1e-5


def test_kernel_choice_defaults_to_the_loop_off_cuda(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv(quant.MOE_KERNEL_ENV, raising=False)
    assert quant.choose_experts_kernel(cpu) == "loop"
    monkeypatch.setenv(quant.MOE_KERNEL_ENV, "triton")
    assert quant.choose_experts_kernel(cpu) == "triton"
    assert quant.choose_experts_kernel(cpu, "loop") == "loop"  # the argument wins
    monkeypatch.setenv(quant.MOE_KERNEL_ENV, "fast")
    with pytest.raises(ValueError, match="LLADA_MOE_KERNEL must be one of auto, triton, loop"):
        quant.choose_experts_kernel(cpu)


def test_dense_layers_keep_torch_kernels_when_experts_use_triton():
    layer = quant.QuantLinear(D, I, 4, GROUP)
    layer.fill(quant.quantize(torch.randn(I, D) * 0.05, 4, GROUP))
    layer.pack(torch.float32, experts_kernel="triton")
    assert layer.kind == "cpu"


# ---- the same source compiled for real GPUs (no GPU needed) --------------------------------------

COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from engine import moe_triton

fn = moe_triton._expert_matmul
for bits, glu in ((8, True), (4, True), ("fp8", True), (8, False), (4, False), ("fp8", False)):
    constants = dict(INT4=bits == 4, FP8=bits == "fp8", GLU=glu, GROUP=128,
                     SCALE_ROWS=128 if bits == "fp8" else 1, BLOCK_M=16, BLOCK_N=64, BLOCK_K=64,
                     IEEE=False, UPCAST=False)
    signature = {}
    for name in fn.arg_names:
        if name in constants:
            signature[name] = "constexpr"
        elif name in ("rows_ptr", "block_expert_ptr"):
            signature[name] = "*i32"
        elif name in ("w_ptr", "w2_ptr"):
            signature[name] = "*i8" if bits == 8 else "*u8"
        elif name.startswith(("scale", "minv")):
            signature[name] = "*fp32" if bits == "fp8" else "*bf16"
        else:
            signature[name] = "*bf16" if name.endswith("_ptr") else "i32"
    for capability in (80, 90):
        target = GPUTarget("cuda", capability, 32)
        compiled = triton.compile(ASTSource(fn, signature, constants), target=target)
        assert compiled.asm["cubin"], (bits, glu, capability)
        # tensor cores: bf16 operands, fp32 sums
        assert "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" in compiled.asm["ptx"]
        print("compiled", bits, glu, capability)
"""


@pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"), reason="ptxas: x86_64 Linux"
)
def test_kernel_compiles_for_ampere_and_hopper(tmp_path):  # int8, int4, FP8; both projections
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # not the user's ~/.triton
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton 3.9 warns when it is unset
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(COMPILE)], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("compiled") == 12


# ---- on a GPU only -------------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_experts_pick_triton_by_default():
    module = quant.pack_model(experts(4).cuda(), torch.bfloat16)
    assert module.kind == "triton"


@pytest.mark.gpu
@pytest.mark.parametrize("bits", [8, 4])
def test_cuda_experts_need_no_sync_and_replay_in_a_graph(bits):
    module = quant.pack_model(experts(bits).cuda(), torch.bfloat16)
    weights, chosen = (t.cuda() for t in routing(24, 3, seed=5))
    x = torch.randn(24, D, device="cuda", dtype=torch.bfloat16)
    expected = module(x, weights, chosen)  # compiles the kernels outside the capture
    torch.cuda.set_sync_debug_mode("error")  # any host sync raises
    try:
        module(x, weights, chosen)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = module(x, weights, chosen)
    x.copy_(torch.randn_like(x))
    chosen.copy_(chosen.roll(1, dims=0))
    graph.replay()
    torch.testing.assert_close(captured, module(x, weights, chosen), rtol=0, atol=0)
    assert not torch.equal(captured, expected)


# ---- through the backbone, on the tiny checkpoint ------------------------------------------------


@pytest.mark.skipif(CUDA, reason="on CUDA test_quant's GPU tests run the backbone on Triton")
@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_tiny_backbone_logits_on_triton_experts_match_the_loop(tiny_checkpoint, precision):
    length = 24
    ids = torch.randint(0, 600, (2, length), generator=torch.Generator().manual_seed(0))
    inputs = ids, torch.arange(length).expand(2, length), torch.ones(2, 1, length, length).bool()
    logits = {}
    for kernel in ("loop", "triton"):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(quant.MOE_KERNEL_ENV, kernel)
            model = quant.load_backbone(tiny_checkpoint, "cpu", torch.float32, precision)
        kinds = {m.kind for m in model.modules() if isinstance(m, quant.QuantExperts)}
        assert kinds == {kernel}
        logits[kernel] = model(*inputs)
    assert relative_error(logits["triton"], logits["loop"]) < 1e-5  # measured 2e-7 and 3e-7
