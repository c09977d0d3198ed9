"""A built wheel carries its package data: installed outside the checkout, the kernels compile and run from the
package, and the chat page's files are there to serve."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# run from the installed copy: it must be the one imported, build its kernels, and match the torch reference
CHECK = textwrap.dedent("""
    import sys
    from pathlib import Path

    import torch

    import tokenmill
    from tokenmill import kernels
    from tokenmill.loading import dequant

    installed = Path(sys.argv[1]).resolve()
    assert installed in Path(tokenmill.__file__).resolve().parents, tokenmill.__file__
    assert kernels.available(), "the kernels did not build from the installed package"
    generator = torch.Generator().manual_seed(0)
    for type_id in (2, 8):  # Q4_0, Q8_0
        info = dequant.GGML_TYPES[type_id]
        rows, columns = 24, info.block_elements * 4
        blocks = torch.randint(0, 256, (rows * 4, info.block_bytes), dtype=torch.uint8, generator=generator)
        blocks[:, :2] = (torch.rand(rows * 4, generator=generator) * 0.02 + 1e-4).half().view(torch.uint8).view(-1, 2)
        blocks = blocks.view(rows, -1)
        weight = dequant.dequantize(blocks.reshape(-1).clone(), type_id, (rows, columns))
        x = torch.randn(3, columns, generator=generator)
        out = kernels.matmul(x, blocks, type_id, columns)
        expected = (x.double() @ weight.double().t()).float()
        # float32 summation-order error: columns / 32 additions per lane, 5 tree levels, the reference's rounding
        bound = (columns / 32 + 7) * 2.0 ** -24 * (x.abs().double() @ weight.abs().double().t()).float()
        assert torch.all((out - expected).abs() <= bound), type_id
    print("built", kernels.build_isa(), "from", Path(kernels.__file__).parent)

    from tokenmill.server import web_page

    for name in web_page.ASSET_TYPES:  # what GET / and /static/ serve, read from the installed package
        assert (Path(web_page.__file__).parent / "static" / name).is_file(), name
        assert web_page.asset_bytes(name).strip(), name
    print("chat page files:", sorted(web_page.ASSET_TYPES))
""")


def _pip(*args: str, cwd: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], cwd=cwd,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="needs a C compiler")
def test_an_installed_wheel_compiles_and_runs_the_kernels_and_has_the_chat_page(tmp_path):
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources it builds
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "tokenmill", source / "tokenmill", ignore=shutil.ignore_patterns("__pycache__"))
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(tmp_path / "dist"), str(source),
         cwd=tmp_path)
    wheel, = (tmp_path / "dist").glob("tokenmill-*.whl")
    installed = tmp_path / "installed"
    _pip("install", "--no-deps", "--no-index", "-q", "--target", str(installed), str(wheel), cwd=tmp_path)
    shutil.rmtree(source)  # nothing may be read from the sources the wheel was built from

    neutral = tmp_path / "elsewhere"
    neutral.mkdir()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "TOKENMILL_KERNELS")}
    # every build includes every header (target.h guards the vector code inside them): the portable build
    # proves the package complete in ~2 s of compiling where the AVX-512 one takes ~10 s
    env.update(PYTHONPATH=str(installed), TOKENMILL_CACHE=str(tmp_path / "cache"), TOKENMILL_KERNEL_ISA="scalar")
    result = subprocess.run([sys.executable, "-c", CHECK, str(installed)], cwd=neutral, env=env,
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "built scalar" in result.stdout and str(installed) in result.stdout
    assert "chat page files: ['chat.css', 'chat.html', 'chat.js', 'markdown.js']" in result.stdout
    assert list((tmp_path / "cache" / "kernels").glob("*.so")), "no library was compiled into TOKENMILL_CACHE"
