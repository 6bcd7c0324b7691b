// llama.cpp's own tokenizer and logits for an exported GGUF, for `python -m kdistill.export.llama_cpp_check
// --native THIS_BINARY` (a check that does not depend on the llama-cpp-python bindings).
//
//   usage: llama_cpp_logits MODEL.gguf TEXT_FILE IDS_FILE OUT_DIR
//     TEXT_FILE  UTF-8 text, tokenized by llama.cpp (no BOS, special tokens parsed) -> OUT_DIR/ids.i32
//     IDS_FILE   int32 token ids (the HF tokenizer's) evaluated in one batch -> OUT_DIR/logits.f32 (T x V)
//
// Build against a llama.cpp build tree (see scripts/gpu_check.sh):
//   g++ -O2 -std=c++17 scripts/llama_cpp_logits.cpp -I$LLAMA/include -I$LLAMA/ggml/include
//       -L$BUILD/bin -lllama -lggml -lggml-base -Wl,-rpath,$BUILD/bin -o llama_cpp_logits
#include "llama.h"

#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

static void quiet(enum ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

static bool write_file(const std::string & path, const void * data, size_t bytes) {
    FILE * f = fopen(path.c_str(), "wb");
    if (!f) return false;
    bool ok = fwrite(data, 1, bytes, f) == bytes;
    return fclose(f) == 0 && ok;
}

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s MODEL.gguf TEXT_FILE IDS_FILE OUT_DIR\n", argv[0]);
        return 2;
    }
    const std::string out = argv[4];
    llama_log_set(quiet, nullptr);
    llama_backend_init();
    llama_model * model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) { fprintf(stderr, "cannot load %s\n", argv[1]); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);

    std::ifstream text_in(argv[2], std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(text_in)), std::istreambuf_iterator<char>());
    std::vector<llama_token> cpp_ids(text.size() + 16);
    int n = llama_tokenize(vocab, text.data(), (int32_t) text.size(), cpp_ids.data(), (int32_t) cpp_ids.size(),
                           /*add_special*/ false, /*parse_special*/ true);
    if (n < 0) { fprintf(stderr, "tokenize failed (%d)\n", n); return 1; }
    cpp_ids.resize(n);
    if (!write_file(out + "/ids.i32", cpp_ids.data(), cpp_ids.size() * sizeof(llama_token))) return 1;

    std::ifstream ids_in(argv[3], std::ios::binary);
    std::string raw((std::istreambuf_iterator<char>(ids_in)), std::istreambuf_iterator<char>());
    std::vector<llama_token> ids(raw.size() / sizeof(llama_token));
    std::copy(raw.data(), raw.data() + ids.size() * sizeof(llama_token), reinterpret_cast<char *>(ids.data()));
    const int T = (int) ids.size();

    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = T + 8;
    cp.n_batch = cp.n_ubatch = T;
    cp.n_threads = cp.n_threads_batch = 1;
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create a context\n"); return 1; }
    llama_batch batch = llama_batch_init(T, 0, 1);
    for (int i = 0; i < T; i++) {
        batch.token[i] = ids[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = T;
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    const int V = llama_vocab_n_tokens(vocab);
    std::vector<float> logits((size_t) T * V);
    for (int i = 0; i < T; i++) {
        const float * row = llama_get_logits_ith(ctx, i);
        std::copy(row, row + V, logits.begin() + (size_t) i * V);
    }
    if (!write_file(out + "/logits.f32", logits.data(), logits.size() * sizeof(float))) return 1;
    printf("%d ids tokenized, %d positions x %d logits\n", n, T, V);
    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
