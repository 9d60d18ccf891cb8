"""Two prolines in a row on a compressed Cα–Cα (3.1 Å, as soft CG traces give) at every position
of protein G: how many of the rings come out open (N–CD more than 0.1 Å off 1.473) or with CD
within 2.2 Å of the previous residue's C.

    python benchmarks/proline_pairs.py
"""
import numpy as np
import openmm.unit as unit
import torch

from openmm_ldb import cg, residues as rc
from openmm_ldb.export import load_model


def main() -> int:
    torch.set_num_threads(1)
    go = cg.GoModel.from_structure(cg.demo_structure_path())
    ca0 = torch.as_tensor(np.asarray(go.native_positions.value_in_unit(unit.nanometer)) * 10.0,
                          dtype=torch.float32)[None]
    rt0 = torch.as_tensor([rc.RESTYPE_INDEX[r.name] for r in go.topology.residues()])
    n = len(rt0)
    seg = torch.zeros(n, dtype=torch.long)
    module, _ = load_model()
    cd_slot = rc.slot_names("PRO").index("CD")
    bad = []
    for k in range(2, n - 2):
        rt = rt0.clone()
        rt[k - 1] = rt[k] = rc.RESTYPE_INDEX["PRO"]
        ca = ca0.clone()
        v = ca[0, k] - ca[0, k - 1]
        ca[0, k:] -= v * (1 - 3.1 / float(v.norm()))
        with torch.no_grad():
            a = module(ca, rt, seg, torch.zeros(0, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                       1, 1, True, False)[0][0, 0]
        for p in (k - 1, k):
            ncd = float((a[p, 0] - a[p, cd_slot]).norm())
            ccd = float((a[p - 1, 2] - a[p, cd_slot]).norm())
            if abs(ncd - 1.473) > 0.1 or ccd < 2.2:
                bad.append((k, p, round(ncd, 2), round(ccd, 2)))
    for row in bad:
        print("pair at", row[0], "proline", row[1], "N-CD", row[2], "C(i-1)-CD", row[3])
    print(f"{len(bad)} of {2 * (n - 4)} rings open or with CD within 2.2 Å of the previous C")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
