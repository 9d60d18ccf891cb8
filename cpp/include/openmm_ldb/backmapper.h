// openmm-ldb C++ API: backmap Calpha traces (e.g. from an OpenMM C++ simulation) to all-atom
// proteins with a model exported by openmm_ldb.export.export_model (TorchScript, .pt).
//
// The header is free of libtorch includes (pimpl), so code that uses it compiles quickly and
// needs only the OpenMM headers.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "openmm/Vec3.h"

namespace OpenMM {
class State;
}

namespace openmm_ldb {

// One atom of the backmapped structure.
struct Atom {
    int residue;           // residue index (0-based, input order)
    int slot;              // slot index in the model's [N, num_slots] layout
    std::string name;      // PDB atom name (H of a segment start is named H1)
    std::string res_name;  // three-letter residue name
    std::string element;   // element symbol (first letter of the name)
};

// Result of one backmap call for one CA frame.
struct BackmapResult {
    int samples = 0;     // S
    int n_residues = 0;  // N
    int n_slots = 0;     // number of atom slots per residue (30)
    // Raw model output in Angstrom, [S, N, n_slots, 3] row-major (unused slots are 0).
    std::vector<float> slot_positions_angstrom;
    // Slot existence mask [N, n_slots] (1 = the atom exists).
    std::vector<float> mask;
    // Existing atoms in residue/slot order, and their positions (nm) per sample:
    // positions[s][a] is atom a of sample s.
    std::vector<Atom> atoms;
    std::vector<std::vector<OpenMM::Vec3>> positions;
    // Largest Calpha move per sample (Angstrom): the exported function moves Calpha only where the
    // trace cannot carry ideal peptide geometry (0 for native-like traces, always 0 with keep_ca).
    std::vector<float> ca_shift;
    // Expected side-chain error of each residue (Angstrom), [S, N]: the per-residue confidence.
    std::vector<float> expected_error;
};

// A disulfide bond between two CYS residues (0-based residue indices).
using Disulfide = std::pair<int, int>;

class Backmapper {
public:
    // Loads an exported TorchScript model (openmm_ldb.export.export_model, .pt) on the CPU.
    // threads > 0 sets libtorch's intra-op thread count (process wide).
    explicit Backmapper(const std::string& model_path, int threads = 0);
    ~Backmapper();
    Backmapper(const Backmapper&) = delete;
    Backmapper& operator=(const Backmapper&) = delete;

    // Residue names of the model vocabulary (index = restype) and slot atom names per residue type.
    const std::vector<std::string>& residue_names() const;
    const std::vector<std::vector<std::string>>& slot_names() const;  // [restype][slot]
    // Index of a three-letter residue name in the vocabulary; -1 if unknown.
    int restype_index(const std::string& res_name) const;
    // The model card JSON text stored in the file.
    const std::string& model_card() const;

    // Backmap one CA trace: the model's one exported function, so the atoms are the Python
    // Backmapper's for the same inputs (disulfides closed, clashes resolved inside the model).
    // ca_nm: N positions (nm); restype: N indices into residue_names(); segment: N ids,
    // consecutive residues with equal ids are bonded; disulfides: bonded CYS pairs; samples:
    // structures drawn; seed: this frame's seed (same seed => same output as Python);
    // deterministic: the one-pass best guess (seed unused); steps: diffusion steps of samples;
    // keep_ca: keep every Calpha exactly as given (bonds may stretch on infeasible traces).
    BackmapResult backmap(const std::vector<OpenMM::Vec3>& ca_nm, const std::vector<int>& restype,
                          const std::vector<int>& segment, const std::vector<Disulfide>& disulfides = {},
                          int samples = 1, int64_t seed = 0, bool deterministic = true, int steps = 10,
                          bool keep_ca = false) const;

    // Same, with the CA positions taken from an OpenMM State (getPositions required) at the given
    // particle indices (one per residue). Chains are not unwrapped across periodic boundaries:
    // use a non-periodic system or a State whose positions are not wrapped.
    BackmapResult backmap(const OpenMM::State& state, const std::vector<int>& bead_indices,
                          const std::vector<int>& restype, const std::vector<int>& segment,
                          const std::vector<Disulfide>& disulfides = {}, int samples = 1, int64_t seed = 0,
                          bool deterministic = true, int steps = 10, bool keep_ca = false) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// Write every sample of `result` as one MODEL record each (chain A, residues numbered from 1,
// atom names from the model card); model_number is incremented per written model.
void write_pdb_models(std::ostream& out, const BackmapResult& result, int& model_number);

// Write a multi-model PDB file of several results (frames), ending with END.
void write_pdb(const std::string& path, const std::vector<BackmapResult>& frames);

// Minimal JSON reader used for the model card (objects, arrays, strings, numbers, literals).
namespace json {
struct Value {
    enum Type { Null, Bool, Number, String, Array, Object } type = Null;
    bool boolean = false;
    double number = 0.0;
    std::string string;
    std::vector<Value> array;
    std::vector<std::pair<std::string, Value>> object;
    const Value* find(const std::string& key) const;  // nullptr if absent or not an object
};
Value parse(const std::string& text);  // throws std::runtime_error on malformed input
}  // namespace json

}  // namespace openmm_ldb
