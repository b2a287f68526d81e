"""Routed experts on quantized stacks in one grouped Triton launch per projection (CUDA).

The experts' weights stay in engine/quant.py's device-neutral format, so saved folders load as
they are and nothing is repacked:
  int8: `qweight` int8 [E, N, K], `scale` bf16 [E, N]                    w = q * scale
  int4: `qweight` uint8 [E, N, K/2] (even column in the low nibble),
        `scale`, `minv` bf16 [E, N, K/g]                                  w = q * scale + minv
The same kernel also runs FP8 experts as the official FP8 checkpoint stores them (`BlockFp8`:
E4M3 with one fp32 scale per 128 x 128 block), decoded in registers on any sm80+ GPU.
A step is two launches: gate and up together (h = silu(x Wg^T) * (x Wu^T)), then down. Each
launch covers every hit expert. The assignments (token, slot) are sorted by expert and padded
per expert to the block size on the device (`expert_blocks`), and the grid is sized by an upper
bound on the number of blocks (ceil(T*K / BLOCK_M) + min(E, T*K)); blocks past the last
expert's end exit at once. Nothing waits for the device, so a step can be captured in a CUDA
graph. Weights are dequantized tile by tile in registers and multiplied with `tl.dot` in fp32
accumulators; no expert is ever dequantized to memory.

Triton is imported here only; engine/quant.py imports this module lazily, on CUDA (or when the
tests force it under TRITON_INTERPRET=1 on the CPU). Only Triton features present from 3.3 on
are used, and only Triton's builtins (not tl.zeros or tl.sigmoid, which are jit functions of
Triton's own), so the tests can interpret a copy of this module in a process where Triton was
imported for compiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor


@triton.jit
def _int4_step(acc, a_even, a_odd, w_cols, scale_at, minv_at, kb, kb_ok, n_ok, stride_wk,
               IEEE: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    """acc + one K tile of a @ w^T for int4: byte columns kb of the tile's rows (w_cols), the
    even columns from the low nibbles, the odd ones from the high (two dots, no shuffle).

    scale_at, minv_at: the tile's group (BLOCK_K divides the group size).
    """
    at = w_cols[None, :] + kb[:, None] * stride_wk
    byte = tl.load(at, mask=kb_ok[:, None] & n_ok[None, :], other=0).to(tl.int32)
    scale = tl.load(scale_at, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    minv = tl.load(minv_at, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    acc = _dot(a_even, (byte & 0xF).to(tl.float32) * scale + minv, acc, IEEE, UPCAST)
    return _dot(a_odd, (byte >> 4).to(tl.float32) * scale + minv, acc, IEEE, UPCAST)


@triton.jit
def _int8_step(acc, a, w_cols, k, k_ok, n_ok, stride_wk, IEEE: tl.constexpr,
               UPCAST: tl.constexpr):  # fmt: skip
    """acc + one K tile of a @ codes^T for int8 (the per-channel scale comes after the sum)."""
    at = w_cols[None, :] + k[:, None] * stride_wk
    codes = tl.load(at, mask=k_ok[:, None] & n_ok[None, :], other=0).to(tl.float32)
    return _dot(a, codes, acc, IEEE, UPCAST)


@triton.jit
def _fp8_step(acc, a, w_cols, scale_at, k, k_ok, n_ok, stride_wk, IEEE: tl.constexpr,
              UPCAST: tl.constexpr):  # fmt: skip
    """acc + one K tile of a @ w^T for block FP8: E4M3 bytes times the tile's block scale
    (BLOCK_K divides the 128-column block; scale_at holds each row's block)."""
    at = w_cols[None, :] + k[:, None] * stride_wk
    byte = tl.load(at, mask=k_ok[:, None] & n_ok[None, :], other=0).to(tl.int32)
    scale = tl.load(scale_at, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    return _dot(a, _e4m3(byte) * scale, acc, IEEE, UPCAST)


@triton.jit
def _e4m3(byte):
    """FP8 E4M3 (the "fn" kind: bias 7, no infinities) bytes in int32 -> fp32, by bit
    arithmetic, so any GPU (and the interpreter) decodes them; NaN codes are not expected."""
    exponent = (byte >> 3) & 0xF
    mantissa = byte & 0x7
    normal = (((exponent + 120) << 23) | (mantissa << 20)).to(tl.float32, bitcast=True)
    value = tl.where(exponent == 0, mantissa.to(tl.float32) * 0.001953125, normal)  # m * 2^-9
    return tl.where((byte & 0x80) != 0, -value, value)


@triton.jit
def _dot(a, w, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    """acc + a @ w with w rounded to a's dtype. IEEE: exact fp32 products (fp32 activations;
    Triton's default there is tf32). UPCAST: the same products on fp32 operands (Triton's
    interpreter multiplies bf16 operands wrongly; bf16 products are exact in fp32)."""
    w = w.to(a.dtype)
    if UPCAST:
        return tl.dot(a.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
    elif IEEE:
        return tl.dot(a, w, acc, input_precision="ieee")
    else:
        return tl.dot(a, w, acc)


@triton.jit
def _expert_matmul(a_ptr, rows_ptr, block_expert_ptr,
                   w_ptr, scale_ptr, minv_ptr, w2_ptr, scale2_ptr, minv2_ptr, out_ptr,
                   N, K_DIM, A_DIV, ROWS,
                   stride_am, stride_ak, stride_we, stride_wn, stride_wk,
                   stride_se, stride_sn, stride_sg, stride_om, stride_on,
                   INT4: tl.constexpr, FP8: tl.constexpr, GLU: tl.constexpr,
                   GROUP: tl.constexpr, SCALE_ROWS: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                   IEEE: tl.constexpr, UPCAST: tl.constexpr):  # fmt: skip
    """One block of rows of one expert times one BLOCK_N slice of that expert's weight.

    Rows are assignment numbers t*K + k (ROWS = T*K marks padding); the activation row of an
    assignment is its number // A_DIV (A_DIV = K for the tokens, 1 for the gate/up output).
    GLU: two weights (gate, up) give silu(a w^T) * (a w2^T). The output row is the assignment.
    Scales: int8 per row; int4 per row and GROUP columns; FP8 per SCALE_ROWS rows and GROUP
    columns (128 x 128 blocks).
    """
    block = tl.program_id(0)
    tile_n = tl.program_id(1)
    expert = tl.load(block_expert_ptr + block).to(tl.int64)
    if expert < 0:  # past the last hit expert's blocks
        return
    rows = tl.load(rows_ptr + block * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok = rows < ROWS
    a_rows = (rows // A_DIV).to(tl.int64)
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    w_cols = expert * stride_we + offs_n * stride_wn  # [BLOCK_N] offsets of column 0
    s_cols = expert * stride_se + (offs_n // SCALE_ROWS) * stride_sn  # group 0's scales
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    acc2 = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    a_base = a_ptr + a_rows[:, None] * stride_am  # [BLOCK_M, 1]
    w_at, w2_at = w_ptr + w_cols, w2_ptr + w_cols
    for k0 in range(0, K_DIM, BLOCK_K):
        if INT4:
            kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)  # byte columns: k = 2kb (low), 2kb+1
            kb_ok = kb < K_DIM // 2
            a_mask = row_ok[:, None] & kb_ok[None, :]
            a_even = tl.load(a_base + (2 * kb)[None, :] * stride_ak, mask=a_mask, other=0.0)
            a_odd = tl.load(a_base + (2 * kb + 1)[None, :] * stride_ak, mask=a_mask, other=0.0)
            s_at = s_cols + (k0 // GROUP) * stride_sg  # BLOCK_K divides GROUP
            acc = _int4_step(acc, a_even, a_odd, w_at, scale_ptr + s_at, minv_ptr + s_at, kb,
                             kb_ok, n_ok, stride_wk, IEEE, UPCAST)  # fmt: skip
            if GLU:
                acc2 = _int4_step(acc2, a_even, a_odd, w2_at, scale2_ptr + s_at, minv2_ptr + s_at,
                                  kb, kb_ok, n_ok, stride_wk, IEEE, UPCAST)  # fmt: skip
        else:
            k = k0 + tl.arange(0, BLOCK_K)
            k_ok = k < K_DIM
            a = tl.load(a_base + k[None, :] * stride_ak, mask=row_ok[:, None] & k_ok[None, :],
                        other=0.0)  # fmt: skip
            if FP8:
                s_at = s_cols + (k0 // GROUP) * stride_sg  # BLOCK_K divides GROUP
                acc = _fp8_step(acc, a, w_at, scale_ptr + s_at, k, k_ok, n_ok, stride_wk, IEEE,
                                UPCAST)  # fmt: skip
                if GLU:
                    acc2 = _fp8_step(acc2, a, w2_at, scale2_ptr + s_at, k, k_ok, n_ok, stride_wk,
                                     IEEE, UPCAST)  # fmt: skip
            else:
                acc = _int8_step(acc, a, w_at, k, k_ok, n_ok, stride_wk, IEEE, UPCAST)
                if GLU:
                    acc2 = _int8_step(acc2, a, w2_at, k, k_ok, n_ok, stride_wk, IEEE, UPCAST)
    if not INT4 and not FP8:  # int8: the per-channel scale applies to the whole row of the sum
        acc = acc * tl.load(scale_ptr + s_cols, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if GLU:
            scale2 = tl.load(scale2_ptr + s_cols, mask=n_ok, other=0.0).to(tl.float32)
            acc2 = acc2 * scale2[None, :]
    if GLU:
        acc = acc / (1 + tl.exp(-acc)) * acc2  # silu(gate) * up
    out_at = out_ptr + rows[:, None].to(tl.int64) * stride_om + offs_n[None, :] * stride_on
    tl.store(out_at, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


# ---- host side: routing on the device, launches ------------------------------------------------


INTERPRETED = type(_expert_matmul).__name__ == "InterpretedFunction"  # TRITON_INTERPRET=1


def block_rows(assignments: int, experts: int) -> int:
    """Rows per block for `assignments` spread over up to `experts`: from shapes alone."""
    average = assignments / max(1, min(experts, assignments))
    return 16 if average <= 24 else 32 if average <= 48 else 64


def max_blocks(assignments: int, experts: int, block_m: int) -> int:
    """An upper bound on the blocks the padded layout needs (each hit expert pads < 1 block)."""
    return triton.cdiv(assignments, block_m) + min(experts, assignments)


def expert_blocks(chosen: Tensor, experts: int, block_m: int) -> tuple[Tensor, Tensor]:
    """The padded layout, computed on the device without waiting for it.

    chosen [T, K] expert numbers -> rows int32 [blocks, block_m] (assignment numbers t*K + k
    grouped by expert, each expert's run padded with T*K to whole blocks) and block_expert
    int32 [blocks] (each block's expert, -1 for the surplus blocks after the last one).
    """
    flat = chosen.reshape(-1).to(torch.int64)
    count, device = flat.numel(), flat.device
    order = flat.argsort(stable=True)
    by_expert = flat[order]
    numbers = torch.arange(experts, device=device)
    first = torch.searchsorted(by_expert, numbers)
    rows_of = torch.searchsorted(by_expert, numbers, right=True) - first  # no bincount: it syncs
    blocks_of = (rows_of + block_m - 1) // block_m
    block_end = blocks_of.cumsum(0)
    block = torch.arange(max_blocks(count, experts, block_m), device=device)
    expert = torch.searchsorted(block_end, block, right=True)  # first e with end > block
    used = expert < experts
    e = expert.clamp(max=experts - 1)
    at = (block - (block_end[e] - blocks_of[e]))[:, None] * block_m
    at = at + torch.arange(block_m, device=device)  # position within the expert's rows
    real = used[:, None] & (at < rows_of[e][:, None])
    picked = order[(first[e][:, None] + at).clamp(max=count - 1)]
    rows = torch.where(real, picked, torch.full_like(picked, count))
    block_expert = torch.where(used, expert, torch.full_like(expert, -1))
    return rows.to(torch.int32), block_expert.to(torch.int32)


def _block_k(stack, k: int) -> int:
    """Columns per tile: a power of two that divides the int4 group or the FP8 block (one
    scale per tile; int4 needs 32, as each of its two dots takes half the tile and a dot at
    least 16)."""
    if stack.bits == 4:
        return min(64, stack.group)  # groups are 32..256, powers of two
    return max(16, min(64, triton.next_power_of_2(k)))


@dataclass(frozen=True)
class Tiles:
    """A launch's shape: weight rows (output columns) per program, warps and pipeline stages.
    Rows of activations per block come from the routing (`block_rows`). Not tuned on a GPU
    yet: tests/bench/gpu.py measures a few."""

    block_n: int = 64
    num_warps: int = 4
    num_stages: int = 3


def expert_matmul(a: Tensor, rows: Tensor, block_expert: Tensor, stacks: tuple, a_div: int,
                  block_m: int, assignments: int, tiles: Tiles = Tiles()) -> Tensor:  # fmt: skip
    """One launch over every block: [assignments, N] in a's dtype (padding rows untouched).

    stacks: one QuantWeight stack, or two (gate, up: the output is silu(gate) * up).
    """
    first = stacks[0]
    second = stacks[-1]
    n, k = first.n, first.k
    int4, fp8 = first.bits == 4, first.bits == "fp8"
    out = torch.empty(assignments, n, dtype=a.dtype, device=a.device)
    block_n = min(tiles.block_n, max(16, triton.next_power_of_2(n)))
    block_k = _block_k(first, k)
    minv = first.minv if int4 else first.scale  # only int4 has minima; never read otherwise
    minv2 = second.minv if int4 else second.scale
    scale_strides = (*first.scale.stride(), 0)[:3]  # int8's [E, N] scale: no group stride
    codes, codes2 = (s.qweight.view(torch.uint8) if fp8 else s.qweight for s in (first, second))
    grid = (block_expert.numel(), triton.cdiv(n, block_n))
    _expert_matmul[grid](
        a, rows, block_expert,
        codes, first.scale, minv, codes2, second.scale, minv2, out,
        n, k, a_div, assignments,
        a.stride(0), a.stride(1), *first.qweight.stride(), *scale_strides, *out.stride(),
        INT4=int4, FP8=fp8, GLU=len(stacks) == 2, GROUP=first.group if int4 or fp8 else k,
        SCALE_ROWS=FP8_BLOCK if fp8 else 1,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        IEEE=a.dtype == torch.float32,
        UPCAST=INTERPRETED and a.dtype != torch.float32,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages,
    )  # fmt: skip
    return out


FP8_BLOCK = 128  # rows and columns that share one FP8 scale (backbone_facts.md §7)


class BlockFp8:
    """An FP8 expert stack as the official FP8 checkpoint holds it (backbone_facts.md §7):
    `qweight` float8_e4m3fn [E, N, K], `scale` fp32 [E, ceil(N/128), ceil(K/128)], w = q * scale.
    Takes the place of a QuantWeight stack in `moe_forward`."""

    bits = "fp8"
    group = FP8_BLOCK

    def __init__(self, qweight: Tensor, scale: Tensor):
        self.qweight, self.scale = qweight, scale
        self.n, self.k = qweight.shape[-2:]

    @classmethod
    def quantize(cls, w: Tensor) -> BlockFp8:
        """w [E, N, K] -> E4M3 codes with one scale per 128 x 128 block (amax / 448)."""
        e, n, k = w.shape
        b = FP8_BLOCK
        padded = torch.nn.functional.pad(w.float(), (0, -k % b, 0, -n % b))
        blocks = padded.view(e, padded.shape[1] // b, b, padded.shape[2] // b, b)
        scale = (blocks.abs().amax((2, 4)) / 448).clamp(min=1e-12)  # [E, N/b, K/b]
        q = blocks / scale[:, :, None, :, None]
        q = q.view_as(padded)[:, :n, :k].to(torch.float8_e4m3fn).contiguous()
        return cls(q, scale.contiguous())

    def dequantized(self, expert: int) -> Tensor:
        """One expert's weight [N, K] in fp32 (the reference)."""
        scale = self.scale[expert].repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)
        return self.qweight[expert].float() * scale[: self.n, : self.k]


def check_stacks(gate, up, down) -> None:
    """The three stacks must be neutral, of one kind and contiguous, with matching widths."""
    for stack in (gate, up, down):
        if not stack.qweight.is_contiguous() or not stack.scale.is_contiguous():
            raise ValueError("the Triton experts kernel needs contiguous expert stacks")
    if gate.bits != up.bits or gate.bits != down.bits:
        raise ValueError("gate, up and down must have the same bits")
    if (gate.n, gate.k) != (up.n, up.k) or (down.n, down.k) != (gate.k, gate.n):
        raise ValueError("gate/up [E, I, D] and down [E, D, I] do not match")


def moe_forward(x: Tensor, weights: Tensor, chosen: Tensor, gate, up, down,
                tiles: Tiles = Tiles()) -> Tensor:  # fmt: skip
    """x [T, D], weights/chosen [T, K] -> [T, D] fp32: sum_k weights * down(silu(gate)*up).

    gate, up, down: QuantWeight stacks in the neutral format (engine/quant.py) or `BlockFp8`.
    Two launches, no host sync.
    """
    check_stacks(gate, up, down)
    tokens, top = chosen.shape
    dim = x.shape[-1]
    assignments = tokens * top
    if assignments == 0:
        return torch.zeros(tokens, dim, dtype=torch.float32, device=x.device)
    experts = gate.qweight.shape[0]
    block_m = block_rows(assignments, experts)
    rows, block_expert = expert_blocks(chosen, experts, block_m)
    x = x.contiguous()
    h = expert_matmul(x, rows, block_expert, (gate, up), top, block_m, assignments, tiles)
    y = expert_matmul(h, rows, block_expert, (down,), 1, block_m, assignments, tiles)
    y = y.float() * weights.reshape(-1, 1).float()
    return y.view(tokens, top, dim).sum(1)
