"""LLVM-level building blocks the Numba kernels inline: a vector-friendly exp, max and prefetch.

Numba's on-disk cache keys a kernel on its own file only: after editing this
module or `rows.py`, delete `kernels/__pycache__/*.nbi` and `*.nbc` so the
kernels in the other files recompile.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_F32 = ir.FloatType()
_I32 = ir.IntType(32)

# exp(x) below this underflows float32 normals; clamping keeps 2**k a normal
# number, and the result is then forced to exactly 0 (so exp(-inf) == 0).
_EXP_LOWEST = -87.0
# Cody-Waite split of ln 2 and the Cephes expf minimax polynomial (~1 ulp on
# |r| <= ln2/2), the same scheme as Cephes `expf`.
_LN2_HI = 0.693359375
_LN2_LO = -2.12194440e-4
_LOG2E = 1.44269504088896341
_EXP_POLY = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)


def _declare(builder, name, n_args):
    fnty = ir.FunctionType(_F32, [_F32] * n_args)
    return builder.module.declare_intrinsic(name, [_F32], fnty)


@intrinsic
def exp_f32(typingctx, x):
    """exp(x) in float32 for x <= 0, within ~1e-7 relative; NaN stays NaN, -inf gives 0."""
    if x != types.float32:
        return None
    sig = types.float32(types.float32)

    def codegen(context, builder, signature, args):
        (value,) = args
        fma = _declare(builder, "llvm.fma", 3)
        rint = _declare(builder, "llvm.rint", 1)
        const = lambda v: ir.Constant(_F32, v)  # noqa: E731
        # An ordered `<` is false for NaN, so NaN passes the clamp and poisons the sum.
        underflow = builder.fcmp_ordered("<", value, const(_EXP_LOWEST))
        t = builder.select(underflow, const(_EXP_LOWEST), value)
        k = builder.call(rint, [builder.fmul(t, const(_LOG2E))])
        r = builder.call(fma, [k, const(-_LN2_HI), t])
        r = builder.call(fma, [k, const(-_LN2_LO), r])
        poly = const(_EXP_POLY[0])
        for coef in _EXP_POLY[1:]:
            poly = builder.call(fma, [poly, r, const(coef)])
        poly = builder.call(fma, [poly, builder.fmul(r, r), r])
        poly = builder.fadd(poly, const(1.0))
        # 2**k built from its bits: k is an integer in [-126, 0] after the clamp.
        exponent = builder.add(builder.fptosi(k, _I32), ir.Constant(_I32, 127))
        scale = builder.bitcast(builder.shl(exponent, ir.Constant(_I32, 23)), _F32)
        result = builder.fmul(poly, scale)
        return builder.select(underflow, const(0.0), result)

    return sig, codegen


@intrinsic
def max_f32(typingctx, a, b):
    """max(a, b) in float32 that returns NaN if either is NaN (llvm.maximum: vectorises)."""
    if a != types.float32 or b != types.float32:
        return None
    sig = types.float32(types.float32, types.float32)

    def codegen(context, builder, signature, args):
        return builder.call(_declare(builder, "llvm.maximum", 2), list(args))

    return sig, codegen


@intrinsic
def prefetch(typingctx, array, index):
    """Hint the CPU to load `array[index]` into cache; never faults, does nothing else."""
    if not isinstance(array, types.Array) or not isinstance(index, types.Integer):
        return None
    sig = types.void(array, index)

    def codegen(context, builder, signature, args):
        data = context.make_array(signature.args[0])(context, builder, args[0]).data
        i8p = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32])
        fn = builder.module.declare_intrinsic("llvm.prefetch", [i8p], fnty)
        # (read, keep in all cache levels, data cache)
        ptr = builder.bitcast(builder.gep(data, [args[1]]), i8p)
        builder.call(fn, [ptr, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def prefer_512bit_vectors(typingctx):
    """Let LLVM vectorise the calling function with 512-bit registers where the CPU has them.

    LLVM defaults to 256-bit vectors on AVX-512 Intel cores; the polynomial exp
    runs about 2x faster at 512 bits. Harmless on CPUs without AVX-512.
    """
    sig = types.void()

    def codegen(context, builder, signature, args):
        # llvmlite only accepts known attribute names; a string attribute is
        # emitted verbatim, so add it through the underlying set.
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return sig, codegen
