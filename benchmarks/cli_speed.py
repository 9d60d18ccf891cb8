"""The CLI end to end as users run it: one fresh ``openmm-ldb backmap`` process over many files,
default settings against ``--threads N``, on a quiet machine and beside a busy process.

    OPENMM_LDB_DATA=../shared/data python benchmarks/cli_speed.py [--chains 30] [--repeats 2]

Writes the Cα of ``--chains`` validation chains as PDB files, then times (wall clock, the whole
process: start-up, model load, reading, backmapping, writing) one CLI call over all of them for
each variant, alternating the variants ``--repeats`` times, first quiet and then with one
CPU-bound process (a Python busy loop at nice 19) running beside it.  With ``pypulchra``
installed (``pip install -e ".[bench]"``), PULCHRA does the same files in a fresh process too
(its file reading and writing included).  Reports the median ms per residue of each and the
default's ratio to the best ``--threads``.  Writes ``benchmarks/results/cli_speed.json``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from _results import write_result
from openmm_ldb import evaluate as ev
from openmm_ldb import residues as rc

PULCHRA_SCRIPT = """
import sys, pathlib, pypulchra
out = pathlib.Path(sys.argv[1])
for path in sys.argv[2:]:
    text = pypulchra.run_from_pdb_str(pathlib.Path(path).read_text()).pdb_str
    (out / pathlib.Path(path).name).write_text(text)
"""


def write_ca_files(chains, folder: str) -> list[str]:
    paths = []
    for k, ch in enumerate(chains):
        lines, serial = [], 0
        for i, rt in enumerate(ch.restype):
            x, y, z = ch.xyz[0, i, 1]
            serial += 1
            lines.append(f"ATOM  {serial:5d}  CA  {rc.RESTYPES_3[int(rt)]} A{i + 1:4d}    {x:8.3f}{y:8.3f}{z:8.3f}"
                         "  1.00  0.00           C")
        path = os.path.join(folder, f"ca_{k:03d}.pdb")
        with open(path, "w") as fh:
            fh.write("\n".join(lines + ["TER", "END"]) + "\n")
        paths.append(path)
    return paths


def run_once(cmd: list[str], out_dir: str) -> float:
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chains", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cli_speed.json"))
    a = p.parse_args()
    chains = ev.validation_chains(max_chains=a.chains)
    residues = int(sum(len(c.restype) for c in chains))
    try:
        import pypulchra  # noqa: F401
        have_pulchra = True
    except ImportError:
        have_pulchra = False
    cli = [sys.executable, "-c", "import sys; from openmm_ldb.cli import main; sys.exit(main())", "backmap"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = write_ca_files(chains, tmp)
        variants = {"default": []}
        variants.update({f"--threads {t}": ["--threads", str(t)] for t in a.threads})
        cmds = {name: cli + files + ["--out-dir", os.path.join(tmp, "out"), "--quiet"] + extra
                for name, extra in variants.items()}
        if have_pulchra:
            cmds["PULCHRA"] = [sys.executable, "-c", PULCHRA_SCRIPT, os.path.join(tmp, "out")] + files
        for condition in ("quiet", "busy"):
            busy = None
            if condition == "busy":
                busy = subprocess.Popen([sys.executable, "-c", "import os; os.nice(19)\nwhile True: pass"])
                time.sleep(1.0)
            try:
                times = {name: [] for name in cmds}
                for _ in range(a.repeats):
                    for name, cmd in cmds.items():
                        times[name].append(run_once(cmd, os.path.join(tmp, "out")))
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
            ms = {name: 1000 * float(np.median(t)) / residues for name, t in times.items()}
            best = min(v for k, v in ms.items() if k.startswith("--threads"))
            results[condition] = {"ms_per_residue": ms, "seconds": times,
                                  "default_over_best_threads": ms["default"] / best}
            if have_pulchra:
                results[condition]["pulchra_over_default"] = ms["PULCHRA"] / ms["default"]
            print(f"== {condition}: " + "  ".join(f"{k} {v:.3f} ms/res" for k, v in ms.items())
                  + f"  (default / best --threads {ms['default'] / best:.2f})", flush=True)
    out = {"command": "python benchmarks/cli_speed.py " + " ".join(sys.argv[1:]), "chains": len(chains),
           "residues": residues, "cpu_count": os.cpu_count(), "pulchra": have_pulchra, "results": results}
    write_result(a.out, out)


if __name__ == "__main__":
    main()
