// Implementation of openmm_ldb::Backmapper: the only translation unit that includes libtorch.
#include "openmm_ldb/backmapper.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include <ATen/Parallel.h>
#include <torch/script.h>

#include "openmm/State.h"

namespace openmm_ldb {

// ------------------------------------------------------------------------------------ JSON
namespace json {

const Value* Value::find(const std::string& key) const {
    if (type != Object) return nullptr;
    for (const auto& kv : object)
        if (kv.first == key) return &kv.second;
    return nullptr;
}

namespace {

struct Parser {
    const std::string& s;
    size_t i = 0;

    [[noreturn]] void fail(const std::string& what) const {
        throw std::runtime_error("model card JSON: " + what + " at offset " + std::to_string(i));
    }
    void ws() {
        while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    }
    bool eat(char c) {
        ws();
        if (i < s.size() && s[i] == c) {
            ++i;
            return true;
        }
        return false;
    }
    void expect(char c) {
        if (!eat(c)) fail(std::string("expected '") + c + "'");
    }
    static void put_utf8(std::string& out, unsigned cp) {
        if (cp < 0x80) {
            out += static_cast<char>(cp);
        } else if (cp < 0x800) {
            out += static_cast<char>(0xC0 | (cp >> 6));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            out += static_cast<char>(0xE0 | (cp >> 12));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        } else {
            out += static_cast<char>(0xF0 | (cp >> 18));
            out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
            out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
            out += static_cast<char>(0x80 | (cp & 0x3F));
        }
    }
    unsigned hex4() {
        if (i + 4 > s.size()) fail("short \\u escape");
        unsigned v = static_cast<unsigned>(std::stoul(s.substr(i, 4), nullptr, 16));
        i += 4;
        return v;
    }
    std::string str() {
        ws();
        if (i >= s.size() || s[i] != '"') fail("expected string");
        ++i;
        std::string out;
        while (true) {
            if (i >= s.size()) fail("unterminated string");
            char c = s[i++];
            if (c == '"') break;
            if (c != '\\') {
                out += c;
                continue;
            }
            if (i >= s.size()) fail("bad escape");
            char e = s[i++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned cp = hex4();
                    if (cp >= 0xD800 && cp < 0xDC00 && i + 6 <= s.size() && s[i] == '\\' && s[i + 1] == 'u') {
                        i += 2;
                        unsigned lo = hex4();
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    }
                    put_utf8(out, cp);
                    break;
                }
                default: fail("bad escape");
            }
        }
        return out;
    }
    Value value() {
        ws();
        if (i >= s.size()) fail("unexpected end");
        Value v;
        char c = s[i];
        if (c == '{') {
            ++i;
            v.type = Value::Object;
            if (eat('}')) return v;
            do {
                std::string key = str();
                expect(':');
                v.object.emplace_back(key, value());
            } while (eat(','));
            expect('}');
        } else if (c == '[') {
            ++i;
            v.type = Value::Array;
            if (eat(']')) return v;
            do {
                v.array.push_back(value());
            } while (eat(','));
            expect(']');
        } else if (c == '"') {
            v.type = Value::String;
            v.string = str();
        } else if (s.compare(i, 4, "true") == 0) {
            i += 4;
            v.type = Value::Bool;
            v.boolean = true;
        } else if (s.compare(i, 5, "false") == 0) {
            i += 5;
            v.type = Value::Bool;
        } else if (s.compare(i, 4, "null") == 0) {
            i += 4;
        } else if (s.compare(i, 3, "NaN") == 0) {  // Python's json.dumps writes these
            i += 3;
            v.type = Value::Number;
            v.number = std::nan("");
        } else if (s.compare(i, 8, "Infinity") == 0 || s.compare(i, 9, "-Infinity") == 0) {
            bool neg = s[i] == '-';
            i += neg ? 9 : 8;
            v.type = Value::Number;
            v.number = neg ? -HUGE_VAL : HUGE_VAL;
        } else {
            const char* start = s.c_str() + i;
            char* end = nullptr;
            v.number = std::strtod(start, &end);
            if (end == start) fail("unexpected character");
            i += static_cast<size_t>(end - start);
            v.type = Value::Number;
        }
        return v;
    }
};

}  // namespace

Value parse(const std::string& text) {
    Parser p{text};
    Value v = p.value();
    p.ws();
    if (p.i != text.size()) p.fail("trailing characters");
    return v;
}

}  // namespace json

// ------------------------------------------------------------------------------ Backmapper
namespace {
constexpr const char* kCardName = "model_card.json";
constexpr int kHSlot = 15;  // slot of the amide H; named H1 at segment starts
}  // namespace

struct Backmapper::Impl {
    torch::jit::script::Module module;
    std::string card_text;
    std::vector<std::string> residues;
    std::vector<std::vector<std::string>> slots;
    std::mutex mutex;
};

Backmapper::Backmapper(const std::string& model_path, int threads) : impl_(new Impl) {
    if (threads > 0) at::set_num_threads(threads);
    torch::jit::ExtraFilesMap extra{{kCardName, ""}};
    try {
        impl_->module = torch::jit::load(model_path, torch::kCPU, extra);
    } catch (const c10::Error& e) {
        throw std::runtime_error("cannot load TorchScript model '" + model_path + "': " + e.what_without_backtrace());
    }
    impl_->module.eval();
    impl_->card_text = extra[kCardName];
    if (impl_->card_text.empty())
        throw std::runtime_error(model_path + ": no " + kCardName + " in the model file (not an openmm-ldb export?)");
    json::Value card = json::parse(impl_->card_text);
    const json::Value* res = card.find("residues");
    const json::Value* slots = card.find("slots");
    if (!res || res->type != json::Value::Array || !slots || slots->type != json::Value::Object)
        throw std::runtime_error(model_path + ": model card lacks 'residues' / 'slots'");
    for (const auto& r : res->array) {
        impl_->residues.push_back(r.string);
        const json::Value* names = slots->find(r.string);
        if (!names || names->type != json::Value::Array)
            throw std::runtime_error(model_path + ": model card has no slots for " + r.string);
        std::vector<std::string> row;
        for (const auto& n : names->array) row.push_back(n.string);
        impl_->slots.push_back(row);
    }
}

Backmapper::~Backmapper() = default;

const std::vector<std::string>& Backmapper::residue_names() const { return impl_->residues; }
const std::vector<std::vector<std::string>>& Backmapper::slot_names() const { return impl_->slots; }
const std::string& Backmapper::model_card() const { return impl_->card_text; }

int Backmapper::restype_index(const std::string& res_name) const {
    for (size_t k = 0; k < impl_->residues.size(); ++k)
        if (impl_->residues[k] == res_name) return static_cast<int>(k);
    return -1;
}

BackmapResult Backmapper::backmap(const std::vector<OpenMM::Vec3>& ca_nm, const std::vector<int>& restype,
                                  const std::vector<int>& segment, const std::vector<Disulfide>& disulfides,
                                  int samples, int64_t seed, bool deterministic, int steps, bool keep_ca) const {
    const int64_t n = static_cast<int64_t>(ca_nm.size());
    if (n == 0) throw std::invalid_argument("backmap: empty CA trace");
    if (static_cast<int64_t>(restype.size()) != n || static_cast<int64_t>(segment.size()) != n)
        throw std::invalid_argument("backmap: ca, restype and segment must have the same length");
    if (samples < 1) throw std::invalid_argument("backmap: samples must be >= 1");
    const int n_types = static_cast<int>(impl_->residues.size());
    for (int r : restype)
        if (r < 0 || r >= n_types) throw std::invalid_argument("backmap: restype index out of range");

    // float32 Angstrom, converted exactly like the Python Backmapper (double nm * 10 -> float)
    torch::Tensor ca = torch::empty({1, n, 3}, torch::kFloat32);
    float* pc = ca.data_ptr<float>();
    for (int64_t i = 0; i < n; ++i)
        for (int d = 0; d < 3; ++d) pc[3 * i + d] = static_cast<float>(ca_nm[i][d] * 10.0);
    torch::Tensor rt = torch::empty({n}, torch::kInt64);
    torch::Tensor sg = torch::empty({n}, torch::kInt64);
    for (int64_t i = 0; i < n; ++i) {
        rt.data_ptr<int64_t>()[i] = restype[i];
        sg.data_ptr<int64_t>()[i] = segment[i];
    }
    const int64_t n_pairs = static_cast<int64_t>(disulfides.size());
    torch::Tensor pairs = torch::empty({n_pairs, 2}, torch::kInt64);
    for (int64_t p = 0; p < n_pairs; ++p) {
        const int a = disulfides[p].first, b = disulfides[p].second;
        if (a < 0 || a >= n || b < 0 || b >= n) throw std::invalid_argument("backmap: disulfide index out of range");
        pairs.data_ptr<int64_t>()[2 * p] = a;
        pairs.data_ptr<int64_t>()[2 * p + 1] = b;
    }
    torch::Tensor seeds = torch::full({1}, seed, torch::kInt64);

    torch::Tensor atoms, mask, shift, error;
    {
        std::lock_guard<std::mutex> lock(impl_->mutex);
        c10::InferenceMode guard;
        std::vector<torch::jit::IValue> inputs{ca, rt, sg, pairs, seeds, static_cast<int64_t>(steps),
                                               static_cast<int64_t>(samples), deterministic, keep_ca};
        auto out = impl_->module.forward(inputs).toTuple();
        atoms = out->elements()[0].toTensor().to(torch::kCPU, torch::kFloat32).contiguous();
        mask = out->elements()[1].toTensor().to(torch::kCPU, torch::kFloat32).contiguous();
        shift = out->elements()[2].toTensor().to(torch::kCPU, torch::kFloat32).contiguous();
        error = out->elements()[3].toTensor().to(torch::kCPU, torch::kFloat32).contiguous();
    }
    if (atoms.dim() != 5 || atoms.size(0) != 1 || atoms.size(1) != samples || atoms.size(2) != n || atoms.size(4) != 3)
        throw std::runtime_error("backmap: unexpected model output shape");
    const int n_slots = static_cast<int>(atoms.size(3));

    BackmapResult r;
    r.samples = samples;
    r.n_residues = static_cast<int>(n);
    r.n_slots = n_slots;
    r.slot_positions_angstrom.assign(atoms.data_ptr<float>(), atoms.data_ptr<float>() + atoms.numel());
    r.mask.assign(mask.data_ptr<float>(), mask.data_ptr<float>() + mask.numel());
    r.ca_shift.assign(shift.data_ptr<float>(), shift.data_ptr<float>() + shift.numel());
    r.expected_error.assign(error.data_ptr<float>(), error.data_ptr<float>() + error.numel());
    for (int i = 0; i < n; ++i) {
        const auto& names = impl_->slots[restype[i]];
        const bool seg_start = i == 0 || segment[i - 1] != segment[i];
        for (int k = 0; k < n_slots; ++k) {
            if (r.mask[i * n_slots + k] <= 0.5f) continue;
            std::string name = k < static_cast<int>(names.size()) ? names[k] : "";
            if (k == kHSlot && seg_start) name = "H1";
            if (name.empty()) name = "X" + std::to_string(k);
            r.atoms.push_back({i, k, name, impl_->residues[restype[i]], name.substr(0, 1)});
        }
    }
    r.positions.resize(samples);
    const float* pa = r.slot_positions_angstrom.data();
    for (int s = 0; s < samples; ++s) {
        auto& pos = r.positions[s];
        pos.reserve(r.atoms.size());
        for (const Atom& a : r.atoms) {
            const float* p = pa + ((static_cast<size_t>(s) * n + a.residue) * n_slots + a.slot) * 3;
            pos.emplace_back(p[0] * 0.1, p[1] * 0.1, p[2] * 0.1);
        }
    }
    return r;
}

BackmapResult Backmapper::backmap(const OpenMM::State& state, const std::vector<int>& bead_indices,
                                  const std::vector<int>& restype, const std::vector<int>& segment,
                                  const std::vector<Disulfide>& disulfides, int samples, int64_t seed,
                                  bool deterministic, int steps, bool keep_ca) const {
    const std::vector<OpenMM::Vec3>& pos = state.getPositions();
    std::vector<OpenMM::Vec3> ca;
    ca.reserve(bead_indices.size());
    for (int idx : bead_indices) {
        if (idx < 0 || idx >= static_cast<int>(pos.size()))
            throw std::invalid_argument("backmap: bead index out of range of the State's positions");
        ca.push_back(pos[idx]);
    }
    return backmap(ca, restype, segment, disulfides, samples, seed, deterministic, steps, keep_ca);
}

// ------------------------------------------------------------------------------------ PDB
void write_pdb_models(std::ostream& out, const BackmapResult& result, int& model_number) {
    char line[96];
    for (int s = 0; s < result.samples; ++s) {
        std::snprintf(line, sizeof(line), "MODEL     %4d\n", ++model_number);
        out << line;
        int serial = 0;
        for (size_t a = 0; a < result.atoms.size(); ++a) {
            const Atom& at = result.atoms[a];
            const OpenMM::Vec3& p = result.positions[s][a];
            // atom names shorter than 4 characters start in column 14 (one-letter elements)
            std::string name = at.name.size() < 4 ? " " + at.name : at.name.substr(0, 4);
            std::snprintf(line, sizeof(line), "ATOM  %5d %-4s %3s A%4d    %8.3f%8.3f%8.3f%6.2f%6.2f          %2s\n",
                          (++serial) % 100000, name.c_str(), at.res_name.c_str(), (at.residue + 1) % 10000,
                          p[0] * 10.0, p[1] * 10.0, p[2] * 10.0, 1.0, 0.0, at.element.c_str());
            out << line;
        }
        if (!result.atoms.empty()) {
            const Atom& last = result.atoms.back();
            std::snprintf(line, sizeof(line), "TER   %5d      %3s A%4d\n", (serial + 1) % 100000, last.res_name.c_str(),
                          (last.residue + 1) % 10000);
            out << line;
        }
        out << "ENDMDL\n";
    }
}

void write_pdb(const std::string& path, const std::vector<BackmapResult>& frames) {
    std::ofstream out(path);
    if (!out) throw std::runtime_error("cannot write " + path);
    int model = 0;
    for (const auto& f : frames) write_pdb_models(out, f, model);
    out << "END\n";
}

}  // namespace openmm_ldb
