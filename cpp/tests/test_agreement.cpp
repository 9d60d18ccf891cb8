// Agreement of the C++ Backmapper with the Python model on reference cases written by
// tests/test_cpp.py.  Usage: test_agreement MODEL.pt REFERENCE.txt
// (or $OPENMM_LDB_TEST_MODEL / $OPENMM_LDB_TEST_REFERENCE; exit code 77 = skipped).
//
// Reference format (whitespace-separated tokens):
//   openmm_ldb_agreement 2
//   cases K
//   K times:
//     case NAME n N samples S seed SEED deterministic 0|1 steps T slots M
//     restype  N ints
//     segment  N ints
//     disulfides P  then P pairs of residue indices
//     ca_nm    N*3 numbers (nm)
//     mask     N*M numbers
//     atoms    S*N*M*3 numbers (Angstrom, output of the Python model)
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <stdexcept>
#include <string>
#include <vector>

#include "openmm_ldb/backmapper.h"

namespace {

constexpr double kTolerance = 1e-3;  // Angstrom

void expect(std::istream& in, const std::string& word) {
    std::string tok;
    if (!(in >> tok) || tok != word) throw std::runtime_error("reference file: expected '" + word + "', got '" + tok + "'");
}

template <class T>
T read(std::istream& in) {
    T v;
    if (!(in >> v)) throw std::runtime_error("reference file: truncated");
    return v;
}

template <class T>
std::vector<T> read_n(std::istream& in, const std::string& word, size_t n) {
    expect(in, word);
    std::vector<T> v(n);
    for (auto& x : v) x = read<T>(in);
    return v;
}

}  // namespace

int main(int argc, char** argv) {
    std::string model_path, ref_path;
    if (argc >= 3) {
        model_path = argv[1];
        ref_path = argv[2];
    } else {
        const char* m = std::getenv("OPENMM_LDB_TEST_MODEL");
        const char* r = std::getenv("OPENMM_LDB_TEST_REFERENCE");
        if (!m || !r) {
            std::cout << "skipped: no model / reference file given (run tests/test_cpp.py)\n";
            return 77;
        }
        model_path = m;
        ref_path = r;
    }
    try {
        openmm_ldb::Backmapper bm(model_path, 1);
        std::ifstream in(ref_path);
        if (!in) throw std::runtime_error("cannot open " + ref_path);
        expect(in, "openmm_ldb_agreement");
        if (read<int>(in) != 2) throw std::runtime_error("unsupported reference format version");
        expect(in, "cases");
        const int n_cases = read<int>(in);
        int failures = 0;
        for (int c = 0; c < n_cases; ++c) {
            expect(in, "case");
            const std::string name = read<std::string>(in);
            expect(in, "n");
            const int n = read<int>(in);
            expect(in, "samples");
            const int samples = read<int>(in);
            expect(in, "seed");
            const long long seed = read<long long>(in);
            expect(in, "deterministic");
            const bool deterministic = read<int>(in) != 0;
            expect(in, "steps");
            const int steps = read<int>(in);
            expect(in, "slots");
            const int slots = read<int>(in);
            const auto restype = read_n<int>(in, "restype", n);
            const auto segment = read_n<int>(in, "segment", n);
            expect(in, "disulfides");
            const int n_pairs = read<int>(in);
            std::vector<openmm_ldb::Disulfide> disulfides;
            for (int p = 0; p < n_pairs; ++p) {
                const int a = read<int>(in);
                disulfides.emplace_back(a, read<int>(in));
            }
            const auto ca_flat = read_n<double>(in, "ca_nm", static_cast<size_t>(n) * 3);
            const auto mask = read_n<float>(in, "mask", static_cast<size_t>(n) * slots);
            const auto atoms = read_n<double>(in, "atoms", static_cast<size_t>(samples) * n * slots * 3);
            std::vector<OpenMM::Vec3> ca;
            for (int i = 0; i < n; ++i) ca.emplace_back(ca_flat[3 * i], ca_flat[3 * i + 1], ca_flat[3 * i + 2]);

            const auto r = bm.backmap(ca, restype, segment, disulfides, samples, seed, deterministic, steps);
            bool ok = r.n_slots == slots && r.slot_positions_angstrom.size() == atoms.size() && r.mask.size() == mask.size();
            double max_diff = 0.0;
            int mask_diff = 0;
            if (ok) {
                for (size_t k = 0; k < atoms.size(); ++k) {
                    const double d = std::fabs(static_cast<double>(r.slot_positions_angstrom[k]) - atoms[k]);
                    if (!(d <= max_diff)) max_diff = d;  // also catches NaN
                }
                for (size_t k = 0; k < mask.size(); ++k) mask_diff += r.mask[k] != mask[k];
                size_t n_mask = 0;
                for (float m : mask) n_mask += m > 0.5f;
                ok = max_diff < kTolerance && mask_diff == 0 && r.atoms.size() == n_mask &&
                     static_cast<int>(r.positions.size()) == samples;
            }
            std::cout << (ok ? "ok   " : "FAIL ") << name << ": N=" << n << " samples=" << samples << " seed=" << seed
                      << " deterministic=" << deterministic << " atoms=" << r.atoms.size()
                      << " max|dx|=" << max_diff << " A, mask mismatches=" << mask_diff << "\n";
            failures += !ok;
        }
        if (n_cases == 0) throw std::runtime_error("reference file has no cases");
        return failures == 0 ? 0 : 1;
    } catch (const std::exception& e) {
        std::cerr << "error: " << e.what() << "\n";
        return 2;
    }
}
