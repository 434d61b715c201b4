"""The data layer has no import cycle, and an index reads its samples through the reader registered for its kind."""

from __future__ import annotations

import ast
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

import cleanface.data
from cleanface.data._paths import has_image_extension, image_named
from cleanface.data.strings import StringArray

DATA = Path(cleanface.data.__file__).parent


def _imports(path: Path) -> set[str]:
    """The cleanface.data modules that ``path`` imports anywhere (top level, in functions, under TYPE_CHECKING)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                module = ".".join(["cleanface.data"] + ([module] if module else []))
            found |= {f"{module}.{a.name}" for a in node.names} if module == "cleanface.data" else {module}
    return {m for m in found if m.startswith("cleanface.data.")}


def test_no_import_cycle_among_data_modules():
    graph = {f"cleanface.data.{p.stem}": _imports(p) for p in DATA.glob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            pytest.fail("import cycle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done or module not in graph:
            return
        for dep in sorted(graph[module] - {module}):
            visit(dep, path + [module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])
    assert not graph["cleanface.data.index"] & {"cleanface.data.folder", "cleanface.data.manifest", "cleanface.data.recordio"}


def test_an_unregistered_kind_is_one_clear_error(tiny_rec, monkeypatch):
    from cleanface.data import index as index_module
    from cleanface.errors import DataError

    monkeypatch.delitem(index_module.SAMPLE_READERS, "rec")
    with pytest.raises(DataError, match="no reader is registered for rec indexes"):
        tiny_rec.read_bytes(0)
    with pytest.raises(ValueError, match="unknown index kind"):
        index_module.register_reader("zip", index_module.read_file_sample)


def test_a_saved_rec_index_reads_with_index_alone(tmp_path, tiny_rec):
    tiny_rec.save(tmp_path / "rec.npz")
    code = (
        "import hashlib, sys; from cleanface.data.index import DatasetIndex\n"
        f"index = DatasetIndex.load({str(tmp_path / 'rec.npz')!r})\n"
        "digest = hashlib.sha256(b''.join(index.read_bytes(i) for i in range(len(index)))).hexdigest()\n"
        "print(digest, index.fingerprint())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    expected = hashlib.sha256(b"".join(tiny_rec.read_bytes(i) for i in range(len(tiny_rec)))).hexdigest()
    assert out == [expected, tiny_rec.fingerprint()]


@pytest.fixture
def tiny_rec(tmp_path):
    import io

    import numpy as np
    from PIL import Image

    from cleanface.data.open import open_dataset, write_dataset

    for k in range(4):
        (tmp_path / "src" / f"id{k % 2}").mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(np.full((8, 8, 3), k * 40, dtype=np.uint8)).save(buf, "PNG")
        (tmp_path / "src" / f"id{k % 2}" / f"{k}.png").write_bytes(buf.getvalue())
    return open_dataset(write_dataset(open_dataset(tmp_path / "src"), tmp_path / "rec", "rec"))


NAMES = ["a.jpg", "a.JPG", "x/b.Png", "c.jpeg", "d.webp", "e.pgm", "f.ppm", "g.bmp", ".jpg", "x/.png", "..jpg", "a..jpg",
         "a.jpg/", "ajpg", "a.jpgx", "a.tif", "", "/", "/etc/passwd", "../../x.png", "caf\udce9.jpeg", "dir.jpg/readme", "a.JpEg"]


def test_vectorised_image_names_match_the_per_name_rule():
    assert image_named(StringArray.from_list(NAMES)).tolist() == [has_image_extension(n) for n in NAMES]
    assert [n for n in NAMES if has_image_extension(n)] == [
        "a.jpg", "a.JPG", "x/b.Png", "c.jpeg", "d.webp", "e.pgm", "f.ppm", "g.bmp", "..jpg", "a..jpg", "../../x.png", "caf\udce9.jpeg", "a.JpEg"]
