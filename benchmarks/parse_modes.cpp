// simdjson alone on the corpus: one parse per line (one reused parser) against a
// document stream (parse_many) over the whole buffer. The compiled core parses
// per line: both run at the same speed here, and a line keeps its own errors.
//
//   SJ=$(python -c 'import simdjson, os; print(os.path.dirname(simdjson.__file__))')
//   g++ -O3 -std=c++17 -DNDEBUG -I"$SJ" benchmarks/parse_modes.cpp "$SJ/simdjson.cpp" -o /tmp/parse_modes
//   /tmp/parse_modes ../shared/corpus/openbao-mixed.jsonl 20
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "simdjson.h"

using namespace simdjson;

int main(int argc, char **argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s corpus.jsonl [copies]\n", argv[0]);
        return 2;
    }
    FILE *f = std::fopen(argv[1], "rb");
    if (!f) return 1;
    std::string one;
    char buf[1 << 16];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) one.append(buf, n);
    std::fclose(f);
    int copies = argc > 2 ? std::atoi(argv[2]) : 20;
    std::string data;
    for (int i = 0; i < copies; i++) data += one;
    data.reserve(data.size() + SIMDJSON_PADDING);
    std::printf("implementation: %s, %zu bytes\n", get_active_implementation()->name().c_str(), data.size());

    dom::parser parser;
    for (int round = 0; round < 5; round++) {
        auto t0 = std::chrono::steady_clock::now();
        size_t lines = 0, errors = 0;
        const char *p = data.data(), *end = p + data.size();
        while (p < end) {
            const char *nl = static_cast<const char *>(std::memchr(p, '\n', static_cast<size_t>(end - p)));
            if (!nl) nl = end;
            if (nl > p) {
                if (parser.parse(p, static_cast<size_t>(nl - p), false).error()) errors++;
                lines++;
            }
            p = nl + 1;
        }
        double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("per line:   %zu lines, %zu errors, %.0f lines/s, %.0f MB/s\n", lines, errors, lines / dt,
                    data.size() / dt / 1e6);

        t0 = std::chrono::steady_clock::now();
        size_t docs = 0;
        dom::document_stream stream;
        if (parser.parse_many(data.data(), data.size(), 1 << 20).get(stream)) return 1;
        for (auto doc : stream) {
            dom::element root;
            if (doc.get(root)) errors++;
            docs++;
        }
        dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::printf("parse_many: %zu docs, %.0f lines/s, %.0f MB/s\n", docs, docs / dt, data.size() / dt / 1e6);
    }
    return 0;
}
