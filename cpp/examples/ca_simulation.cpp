// A Calpha coarse-grained simulation in OpenMM C++ with live all-atom backmapping.
//
//   ca_simulation MODEL.pt OUT.pdb [steps=2000] [interval=100] [samples=1]
//
// The system is a toy Calpha model of protein G B1 (56 beads): harmonic virtual bonds (0.38 nm),
// virtual angles and torsions that favour a helix, and a weak Lennard-Jones attraction between
// beads more than two bonds apart.  Every `interval` Langevin steps the State's positions are
// backmapped with the exported LDB model and written as MODEL records of OUT.pdb.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "OpenMM.h"
#include "openmm_ldb/backmapper.h"

#ifndef OPENMM_LDB_PLUGIN_DIR
#define OPENMM_LDB_PLUGIN_DIR ""
#endif

namespace {

const char* kSequence = "MTYKLILNGKTLKGETTTEAVDAATAEKVFKQYANDNGVDGEWTYDDATKTFTVTE";  // GB1

std::string three_letter(char c) {
    static const std::map<char, std::string> table = {
        {'A', "ALA"}, {'C', "CYS"}, {'D', "ASP"}, {'E', "GLU"}, {'F', "PHE"}, {'G', "GLY"}, {'H', "HIS"},
        {'I', "ILE"}, {'K', "LYS"}, {'L', "LEU"}, {'M', "MET"}, {'N', "ASN"}, {'P', "PRO"}, {'Q', "GLN"},
        {'R', "ARG"}, {'S', "SER"}, {'T', "THR"}, {'V', "VAL"}, {'W', "TRP"}, {'Y', "TYR"}};
    return table.at(c);
}

OpenMM::Platform& pick_platform() {
    const char* env = std::getenv("OPENMM_PLUGIN_DIR");
    const std::string dir = env ? env : OPENMM_LDB_PLUGIN_DIR;
    if (!dir.empty()) OpenMM::Platform::loadPluginsFromDirectory(dir);  // failures (e.g. no OpenCL) are ignored
    try {
        return OpenMM::Platform::getPlatformByName("CPU");
    } catch (const OpenMM::OpenMMException&) {
        return OpenMM::Platform::getPlatformByName("Reference");
    }
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3) {
        std::cerr << "usage: " << argv[0] << " MODEL.pt OUT.pdb [steps=2000] [interval=100] [samples=1]\n";
        return 2;
    }
    const std::string model_path = argv[1], out_path = argv[2];
    const int steps = argc > 3 ? std::atoi(argv[3]) : 2000;
    const int interval = argc > 4 ? std::max(1, std::atoi(argv[4])) : 100;
    const int samples = argc > 5 ? std::max(1, std::atoi(argv[5])) : 1;
    try {
        openmm_ldb::Backmapper backmapper(model_path);
        const int n = static_cast<int>(std::string(kSequence).size());
        std::vector<int> restype(n), segment(n, 0), beads(n);
        for (int i = 0; i < n; ++i) {
            restype[i] = backmapper.restype_index(three_letter(kSequence[i]));
            if (restype[i] < 0) throw std::runtime_error("residue not in the model vocabulary");
            beads[i] = i;
        }

        // ---- the CG system (nm, kJ/mol, ps)
        OpenMM::System system;
        auto* bonds = new OpenMM::HarmonicBondForce();
        auto* angles = new OpenMM::HarmonicAngleForce();
        auto* torsions = new OpenMM::PeriodicTorsionForce();
        auto* pairs = new OpenMM::CustomNonbondedForce("4*eps*((sig/r)^12-(sig/r)^6)");
        pairs->addGlobalParameter("eps", 1.0);
        pairs->addGlobalParameter("sig", 0.5);
        pairs->setNonbondedMethod(OpenMM::CustomNonbondedForce::CutoffNonPeriodic);
        pairs->setCutoffDistance(1.5);
        std::vector<std::pair<int, int>> bonded;
        const double helix_torsion = 50.0 * M_PI / 180.0;
        for (int i = 0; i < n; ++i) {
            system.addParticle(110.0);
            pairs->addParticle({});
            if (i + 1 < n) {
                bonds->addBond(i, i + 1, 0.38, 2.0e4);
                bonded.emplace_back(i, i + 1);
            }
            if (i + 2 < n) angles->addAngle(i, i + 1, i + 2, 1.6, 40.0);
            // k (1 + cos(phi - phase)) has its minimum at phase - pi
            if (i + 3 < n) torsions->addTorsion(i, i + 1, i + 2, i + 3, 1, helix_torsion + M_PI, 3.0);
        }
        pairs->createExclusionsFromBonds(bonded, 2);
        system.addForce(bonds);
        system.addForce(angles);
        system.addForce(torsions);
        system.addForce(pairs);
        system.addForce(new OpenMM::CMMotionRemover());

        // ideal alpha helix as the start: radius 0.23 nm, rise 0.15 nm, 100 degrees per residue
        std::vector<OpenMM::Vec3> positions;
        for (int i = 0; i < n; ++i) {
            const double a = i * 100.0 * M_PI / 180.0;
            positions.emplace_back(0.23 * std::cos(a), 0.23 * std::sin(a), 0.15 * i);
        }

        OpenMM::LangevinMiddleIntegrator integrator(300.0, 1.0, 0.01);
        integrator.setRandomNumberSeed(2024);
        OpenMM::Platform& platform = pick_platform();
        OpenMM::Context context(system, integrator, platform);
        context.setPositions(positions);
        OpenMM::LocalEnergyMinimizer::minimize(context, 1.0, 200);
        std::cout << "platform " << platform.getName() << ", " << n << " beads, " << steps << " steps\n";

        std::ofstream out(out_path);
        if (!out) throw std::runtime_error("cannot write " + out_path);
        int model = 0;
        for (int step = 0; step <= steps; step += interval) {
            if (step > 0) integrator.step(interval);
            OpenMM::State state = context.getState(OpenMM::State::Positions | OpenMM::State::Energy);
            // one best structure per frame, or an ensemble with a per-frame seed
            const auto result = backmapper.backmap(state, beads, restype, segment, {}, samples, step, samples == 1);
            openmm_ldb::write_pdb_models(out, result, model);
            std::cout << "step " << step << "  E_pot " << state.getPotentialEnergy() << " kJ/mol  "
                      << result.atoms.size() << " atoms\n";
        }
        out << "END\n";
        std::cout << "wrote " << model << " models to " << out_path << "\n";
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 1;
    }
    return 0;
}
