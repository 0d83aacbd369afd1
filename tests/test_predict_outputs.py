"""``nlseg predict`` and the files around it: links in the output folder, odd names, shared stems,
resuming a large job."""
from __future__ import annotations

from pathlib import Path

from test_predict import _one_error_line, _photo, _predict, tiny  # noqa: F401 - the fixture


def test_an_output_name_taken_by_a_symlink_is_refused_before_any_work(tiny, tmp_path: Path, capsys):  # noqa: F811
    images, out, elsewhere = tmp_path / "images", tmp_path / "out", tmp_path / "elsewhere"
    for folder in (images, out, elsewhere):
        folder.mkdir()
    _photo(images / "a.png", 12, 16, seed=0)
    _photo(images / "b.png", 12, 16, seed=1)
    precious = elsewhere / "thesis.png"
    precious.write_bytes(b"years of work")
    (out / "b_color.png").symlink_to(precious)
    assert _predict(tiny, "--input", str(images), "--output", str(out)) == 2
    _one_error_line(capsys, str(out / "b_color.png"), "symbolic link", str(precious))
    assert precious.read_bytes() == b"years of work"
    assert sorted(p.name for p in out.iterdir()) == ["b_color.png"]  # nothing predicted, not even a.png
    (out / "b_color.png").unlink()
    (out / "a_overlay.png").symlink_to(tmp_path / "missing.png")  # a dangling link would create its target
    assert _predict(tiny, "--input", str(images), "--output", str(out)) == 2
    _one_error_line(capsys, str(out / "a_overlay.png"), "symbolic link")
    assert not (tmp_path / "missing.png").exists()


def test_an_image_named_with_leading_dots_is_a_png_like_any_other(tiny, tmp_path: Path, capsys):  # noqa: F811
    import numpy as np
    from PIL import Image

    from test_predict import _segmenter

    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(images / "...png", format="PNG")  # PIL finds no extension in the name itself
    _photo(images / "x.png", 12, 16, seed=1)
    (images / ".hidden.png").write_bytes(b"a dotfile, passed over")
    assert _predict(tiny, "--input", str(images), "--output", str(out)) == 0  # found in a folder
    assert "predicted 2 of 2" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{kind}.png" for stem in ("..", "x") for kind in ("", "_color", "_overlay"))
    expected = _segmenter(tiny[1]).predict(images / "...png").numpy()
    assert np.array_equal(np.array(Image.open(out / "...png")), expected)
    assert _predict(tiny, "--input", str(images / "...png"), "--output", str(tmp_path / "one")) == 0  # named directly
    assert "Traceback" not in capsys.readouterr().err
    assert np.array_equal(np.array(Image.open(tmp_path / "one" / "...png")), expected)


def test_skip_existing_resumes_an_interrupted_job_and_the_bar_counts_the_skipped(tiny, tmp_path: Path,  # noqa: F811
                                                                                 capsys):
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    for i, stem in enumerate("abc"):
        _photo(images / f"{stem}.png", 12, 16, seed=i)
    assert _predict(tiny, "--input", str(images), "--output", str(out)) == 0
    capsys.readouterr()
    # killed while writing c's outputs: c.png written, c_color.png half done (its temporary file), no overlay
    (out / "c_color.png").unlink()
    (out / "c_overlay.png").unlink()
    (out / ".c_color.png.5e3a9c1f.tmp").write_bytes(b"\x89PNG half")
    done = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name[0] in "ab"}
    assert _predict(tiny, "--input", str(images), "--output", str(out), "--skip-existing") == 0
    captured = capsys.readouterr()
    assert "predicted 1 of 3 image(s), skipped 2 whose outputs exist: 3 files in" in captured.out
    assert "3/3" in captured.err and "skipped=2" in captured.err  # the bar counts every input
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}{kind}.png" for stem in "abc" for kind in ("", "_color", "_overlay"))
    assert {name: (out / name).stat().st_mtime_ns for name in done} == done  # a and b untouched
