"""Benchmark: frames/s of ``dicomlake.apply`` for a cheap function vs a plain pydicom loop.

Builds a corpus in a temporary folder and ingests it into a fresh lake (not timed):

  ct        512 x 512 CT slices (CT_small.dcm's pixels scaled up, native little endian);
  mr-mf     copies of emri_small.dcm, an MR file of 10 frames (64 x 64).

The function is the same for every contender: mean and standard deviation of the
frame in physical units (Hounsfield units for CT), float64.

  loop         what people write first: for each file ``pydicom.dcmread(path)``,
               ``.pixel_array``, each frame through ``apply_modality_lut``, the
               function; one process, results in a list;
  loop-pool    the same loop per file on a ``ProcessPoolExecutor`` of all cores;
  apply        ``dicomlake.apply(lake, "SELECT path FROM instances", fn, unit="frame")``
               in this process (``workers=0``: no worker start, no timeout), with 1
               worker and with all cores: selection by SQL, decoding, the function,
               and the Delta table written and committed, all timed.

Every contender runs in this one process tree on the same files; the results of
``apply`` are checked against the loop's before any ratio is printed. Prints frames/s
per contender and its ratio to ``loop``.

    python bench/apply.py [--ct 400] [--multiframe 20] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from corpora import write_ct_slices
from pydicom.pixels import apply_modality_lut

import dicomlake
from dicomlake.sample import sample_file


def hu_stats(item: dict[str, Any]) -> dict[str, Any]:
    """The cheap function: mean and standard deviation of the frame's values."""
    image = item["image"].astype(np.float64)
    return {"mean": float(image.mean()), "std": float(image.std())}


def write_multiframe(folder: Path, count: int) -> None:
    """``count`` copies of emri_small.dcm (10 frames each)."""
    folder.mkdir(parents=True)
    for index in range(count):
        shutil.copyfile(sample_file("emri_small.dcm"), folder / f"mr{index:04d}.dcm")


def loop_file(path: str) -> list[tuple[str, int, dict[str, Any]]]:
    """The plain loop's work for one file: every frame, Modality LUT, the function."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    frames = pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[np.newaxis]
    out = []
    for index, frame in enumerate(frames):
        image = np.asarray(apply_modality_lut(frame, ds), np.float32)[np.newaxis]
        meta = {"path": path, "frame": index}
        out.append((path, index, hu_stats({"image": image, "meta": meta})))
    return out


def timed(label: str, frames: int, run: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    print(f"  {label:<22} {seconds:7.2f} s  {frames / seconds:8.1f} frames/s", flush=True)
    return frames / seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=int, default=400, help="512 x 512 CT slices")
    parser.add_argument("--multiframe", type=int, default=20, help="10-frame MR files")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    cores = os.cpu_count() or 1

    root = Path(tempfile.mkdtemp(prefix="bench-apply-"))
    try:
        write_ct_slices(root / "src" / "ct", args.ct)
        write_multiframe(root / "src" / "mr", args.multiframe)
        lake = str(root / "lake")
        dicomlake.ingest([str(root / "src")], lake)
        paths = sorted(str(p) for p in (root / "src").rglob("*.dcm"))
        frames = args.ct + 10 * args.multiframe
        print(
            f"{len(paths)} files, {frames} frames ({args.ct} CT 512 x 512, "
            f"{args.multiframe} x 10 MR 64 x 64), {cores} cores"
        )

        def loop() -> list[Any]:
            return [row for path in paths for row in loop_file(path)]

        def pool() -> list[Any]:
            with ProcessPoolExecutor(cores) as executor:
                chunks = executor.map(loop_file, paths, chunksize=8)
                return [row for chunk in chunks for row in chunk]

        base, expected = timed("loop (1 process)", frames, loop)
        rates = {"loop-pool": timed(f"loop-pool ({cores} procs)", frames, pool)[0]}
        for workers in (0, 1, cores):
            table = f"bench_w{workers}"

            def ours(table: str = table, workers: int = workers) -> Any:
                return dicomlake.apply(
                    lake, "SELECT path FROM instances", hu_stats, table=table, workers=workers
                )

            label = f"apply ({workers} workers)" if workers else "apply (in process)"
            rate, summary = timed(label, frames, ours)
            assert summary.ok == frames, summary
            rates[f"apply-{workers}"] = rate
            check(lake, table, expected)
        print("ratios to the plain loop (higher is faster):")
        for name, rate in rates.items():
            print(f"  {name:<14} {rate / base:6.2f}x")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def check(lake: str, table: str, expected: list[tuple[str, int, dict[str, Any]]]) -> None:
    """The table's means and stds equal the plain loop's, frame by frame."""
    con = dicomlake.connect(lake)
    try:
        got = {
            (path.removeprefix("file://"), frame): (mean, std)
            for path, frame, mean, std in con.sql(
                f"SELECT path, frame, mean, std FROM {table}"
            ).fetchall()
        }
    finally:
        con.close()
    for path, frame, values in expected:
        mean, std = got[(path, frame)]
        assert np.isclose(mean, values["mean"], rtol=1e-9), (path, frame, mean, values)
        assert np.isclose(std, values["std"], rtol=1e-6), (path, frame, std, values)


if __name__ == "__main__":
    main()
