"""The kernels' build: one GGUF type table shared by C and Python, ctypes signatures from exports.h, and the
ISA forced by TOKENMILL_KERNEL_ISA (make test-portable runs tests/kernels under avx2 and scalar)."""

from __future__ import annotations

import ctypes
import os

import pytest
import torch

from tokenmill import kernels
from tokenmill.kernels import build, gguf_types, system
from tokenmill.loading import dequant


def test_c_and_python_read_the_same_type_table():
    lib = kernels.library()
    for type_id, block in gguf_types.TYPES.items():
        assert (lib.tm_block_bytes(type_id), lib.tm_block_elements(type_id)) == (block.block_bytes,
                                                                                 block.block_elements), block
        assert bool(lib.tm_supports(type_id)) == block.block_kernel, block
        assert bool(lib.tm_has_avx512(type_id)) == (block.avx512_kernel and kernels.build_isa() == "avx512"), block
    assert (lib.tm_block_bytes(999), lib.tm_block_elements(999), lib.tm_supports(999)) == (0, 0, 0)
    assert lib.tm_block_bytes(4) == 0  # ids 4 and 5 (the removed Q4_2, Q4_3) are not types


def test_dequant_takes_its_table_from_the_header():
    assert {type_id: (t.name, t.block_elements, t.block_bytes) for type_id, t in dequant.GGML_TYPES.items()} == {
        type_id: (b.name, b.block_elements, b.block_bytes) for type_id, b in gguf_types.TYPES.items()}
    assert dequant.GGML_TYPES[12] == ("Q4_K", 256, 144) and dequant.type_name(39) == "MXFP4"
    assert gguf_types.BY_NAME["Q8_0"].type_id == 8


def test_type_table_parser_rejects_what_it_cannot_read():
    row = "    X(Q4_0, 2, 18, 32, BLOCKS_AVX512)  \\"
    assert gguf_types.parse(row)[2] == gguf_types.BlockType("Q4_0", 2, 18, 32, True, True)
    with pytest.raises(ValueError, match="cannot parse"):
        gguf_types.parse("X(Q4_0, 2, 18, 32, SOMETIMES)")
    with pytest.raises(ValueError, match="twice"):
        gguf_types.parse(f"{row}\n{row}")
    with pytest.raises(ValueError, match="no X"):
        gguf_types.parse("/* empty */")


def test_every_exported_function_is_bound_from_the_header():
    found = build.signatures(build.EXPORTS.read_text())
    assert {"tm_matmul", "tm_attention", "tm_build_isa", "tm_block_bytes", "tm_rotary"} <= set(found)
    lib = kernels.library()
    for name, (restype, argtypes) in found.items():
        assert getattr(lib, name).argtypes == argtypes and getattr(lib, name).restype is restype, name
    assert found["tm_build_isa"] == (ctypes.c_char_p, [])
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    assert found["tm_silu_mul"] == (ctypes.c_int, [ptr, i64, i64, ptr, ctypes.c_int])
    assert len(found["tm_attention"][1]) == 21 and found["tm_attention"][1][18] is ctypes.c_float


def test_signature_parser_refuses_an_unknown_parameter_type():
    with pytest.raises(ValueError, match="double"):
        build.signatures("int tm_scale(const float *x, double factor);")
    assert build.signatures("/* int tm_gone(int a); */ int tm_kept(int a, int64_t b);") == {
        "tm_kept": (ctypes.c_int, [ctypes.c_int, ctypes.c_int64])}


def test_the_build_is_what_was_asked_for():
    requested, built = build.requested_isa(), kernels.build_isa()
    if requested != "native":
        assert built == requested
    elif build.is_x86():
        features = system.isa_features()
        expected = ("avx512" if features["avx512f"] and features["avx512bw"]
                    else "avx2" if features["avx2"] and features["fma"] else "scalar")
        assert built == expected


def test_isa_setting_is_checked(monkeypatch):
    monkeypatch.setenv(build.ISA_VARIABLE, "sse9")
    with pytest.raises(ValueError, match="native, avx512, avx2, scalar"):
        build.requested_isa()
    monkeypatch.setenv(build.ISA_VARIABLE, "AVX2")
    assert build.requested_isa() == "avx2"
    monkeypatch.delenv(build.ISA_VARIABLE)
    assert build.requested_isa() == "native"


@pytest.mark.skipif(not build.is_x86(), reason="x86 ISAs")
def test_each_isa_has_its_own_flags_and_cached_library():
    scalar, native = build.isa_flags("scalar"), build.isa_flags("native")
    assert "-march=x86-64" in scalar and not any("avx" in flag or "v3" in flag or "v4" in flag for flag in scalar)
    assert "-march=native" in native and "-ffp-contract=off" in scalar
    paths = {build.library_path("cc", build.isa_flags(isa)) for isa in ("native", "scalar")}
    assert len(paths) == 2


@pytest.mark.skipif(not build.is_x86(), reason="x86 ISAs")
def test_an_isa_this_cpu_lacks_is_refused(monkeypatch):
    monkeypatch.setattr(build, "cpu_flags", lambda: frozenset({"sse2", "avx", "avx2", "fma", "f16c", "bmi2"}))
    assert "-march=x86-64-v3" in build.isa_flags("avx2")
    with pytest.raises(ValueError, match="lacks avx512f"):
        build.isa_flags("avx512")


@pytest.mark.skipif(not build.is_x86(), reason="x86 ISAs")
def test_check_isa_skips_only_what_this_cpu_lacks(monkeypatch, capsys):
    monkeypatch.setattr(build, "cpu_flags", lambda: frozenset({"sse2", "avx2", "fma", "f16c", "bmi2"}))
    monkeypatch.setenv(build.ISA_VARIABLE, "avx2")
    assert build.check_isa() == 0
    monkeypatch.setenv(build.ISA_VARIABLE, "avx512")
    assert build.check_isa() == 3 and "lacks avx512f" in capsys.readouterr().out
    monkeypatch.setenv(build.ISA_VARIABLE, "avx-512")
    with pytest.raises(ValueError):
        build.check_isa()


def _scalar_library() -> ctypes.CDLL:
    """The portable-C build beside whatever this run loaded (cached like any build)."""
    compiler, flags = build.find_compiler(), build.isa_flags("scalar")
    path = build.library_path(compiler, flags)
    if not path.is_file():
        build.compile_library(compiler, flags, path)
    return build.bind(ctypes.CDLL(str(path)))


@pytest.mark.skipif(not build.is_x86(), reason="x86 ISAs")
@pytest.mark.parametrize("type_name", ["Q4_0", "Q8_0", "Q4_K", "Q6_K", "IQ4_XS"])
def test_scalar_build_keeps_the_contracts(type_name):
    # every run checks the portable paths too: bit-identical blocks, matmul equal up to summation order
    lib = _scalar_library()
    assert lib.tm_build_isa() == b"scalar" and not lib.tm_has_avx512(gguf_types.BY_NAME[type_name].type_id)
    block = gguf_types.BY_NAME[type_name]
    columns, rows = block.block_elements * 2, 19
    generator = torch.Generator().manual_seed(3)
    blocks = torch.randint(0, 256, (rows * columns // block.block_elements, block.block_bytes), dtype=torch.uint8,
                           generator=generator)
    scale_offset = {"Q6_K": 208}.get(type_name, 0)  # the float16 d field: a finite, realistic scale
    blocks[:, scale_offset:scale_offset + 2] = (torch.rand(blocks.shape[0], generator=generator) * 0.02 + 1e-4
                                                ).half().view(torch.uint8).view(-1, 2)
    if type_name == "Q4_K":
        blocks[:, 2:4] = blocks[:, 0:2]
    blocks = blocks.view(rows, -1).contiguous()
    weight = dequant.dequantize(blocks.reshape(-1).clone(), block.type_id, (rows, columns))
    out = torch.empty(rows, columns)
    assert lib.tm_dequant_rows(blocks.data_ptr(), blocks.shape[1], block.type_id, columns, None, rows,
                               out.data_ptr(), 1) == 0
    assert torch.equal(out, weight)
    x = torch.randn(13, columns, generator=generator)
    y = torch.empty(13, rows)
    assert lib.tm_matmul(blocks.data_ptr(), blocks.shape[1], block.type_id, rows, columns, x.data_ptr(), 13,
                         y.data_ptr(), 2) == 0
    expected = (x.double() @ weight.double().t()).float()
    # columns / 32 float32 additions per lane, 5 tree levels, one product rounding (no FMA on this target)
    # and the reference's own rounding to float32: within (columns / 32 + 7) * 2^-24 of sum |terms|
    bound = (columns / 32 + 7) * 2.0 ** -24 * (x.abs().double() @ weight.abs().double().t()).float()
    assert torch.all((y - expected).abs() <= bound + 1e-30)
