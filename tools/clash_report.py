"""Which atom pairs clash in backmapped validation chains (diagnostic for the sampler).

python tools/clash_report.py MODEL.pt --max-chains 10
"""
import argparse
from collections import Counter

import numpy as np

from openmm_ldb import evaluate as ev, metrics, residues as rc
from openmm_ldb.backmapper import Backmapper


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model", nargs="?")
    p.add_argument("--max-chains", type=int, default=10)
    p.add_argument("--keep-ca", action="store_true")
    a = p.parse_args()
    bm = Backmapper(a.model, threads=1)
    kinds = Counter()
    atoms_total = 0
    for chain in ev.validation_chains(max_chains=a.max_chains):
        top, ca = ev.cg_topology(chain), ev.ca_positions_nm(chain)
        plan = bm.plan(top, ca, hydrogens=False)
        out = bm.sample(plan, ca, 1, deterministic=True, keep_ca=a.keep_ca)
        pred, pres = ev.to_slots(plan.layout, out[0, 0], len(chain.restype))
        pres[:, rc.NUM_HEAVY_SLOTS:] = False
        graph = metrics._Graph(chain.restype, plan.segment, pres[:, :metrics.HEAVY], plan.disulfides)
        flat = np.where(pres[:, :metrics.HEAVY, None], pred[:, :metrics.HEAVY], np.nan).reshape(-1, 3)
        i, j, d = metrics.close_pairs(flat, metrics.CLASH_DISTANCE)
        keys = metrics._Graph._pair_key(i, j, graph.n_flat)
        bad = ~np.isin(keys, graph.excluded_keys)
        atoms_total += int(pres[:, :metrics.HEAVY].sum())
        for x, y in zip(i[bad], j[bad]):
            ri, si = divmod(int(x), metrics.HEAVY)
            rj, sj = divmod(int(y), metrics.HEAVY)
            ki = "bb" if si < 4 else ("cb" if si == 4 else "sc")
            kj = "bb" if sj < 4 else ("cb" if sj == 4 else "sc")
            sep = min(abs(ri - rj), 3)
            kinds[(tuple(sorted((ki, kj))), sep)] += 1
    print("heavy atoms", atoms_total)
    for k, v in kinds.most_common():
        print(k, v, round(1000 * v / atoms_total, 2), "per 1000")


if __name__ == "__main__":
    main()
