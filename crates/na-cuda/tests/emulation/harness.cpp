// Host driver of the emulated kernels (appended after the kernel source).
// argv[1]: a directory with params.bin (NaParams), sizes.txt and the inputs;
// writes the outputs beside them.

template <class T>
static std::vector<T> emu_read(const std::string& path, size_t n) {
    std::vector<T> v(n);
    FILE* f = fopen(path.c_str(), "rb");
    if (!f || fread(v.data(), sizeof(T), n, f) != n) {
        fprintf(stderr, "cannot read %zu elements from %s\n", n, path.c_str());
        exit(2);
    }
    fclose(f);
    return v;
}

template <class T>
static void emu_write(const std::string& path, const std::vector<T>& v) {
    FILE* f = fopen(path.c_str(), "wb");
    if (!f || fwrite(v.data(), sizeof(T), v.size(), f) != v.size()) {
        fprintf(stderr, "cannot write %s\n", path.c_str());
        exit(2);
    }
    fclose(f);
}

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    const std::string dir = argv[1];
    static_assert(sizeof(NaParams) == 64, "NaParams mirrors the Rust struct");
    const NaParams p = emu_read<NaParams>(dir + "/params.bin", 1)[0];
    unsigned blocks, tiles, threads, has_rpb, want_drpb;
    size_t qk, vl, ll, rl;
    FILE* f = fopen((dir + "/sizes.txt").c_str(), "r");
    if (!f || fscanf(f, "%u %u %u %zu %zu %zu %zu %u %u", &blocks, &tiles, &threads, &qk, &vl, &ll,
                     &rl, &has_rpb, &want_drpb) != 9) {
        return 2;
    }
    fclose(f);
    if (threads != NA_THREADS) return 3;
    const auto q = emu_read<elem_t>(dir + "/q.bin", qk);
    const auto k = emu_read<elem_t>(dir + "/k.bin", qk);
    const auto v = emu_read<elem_t>(dir + "/v.bin", vl);
    const auto rpb = has_rpb ? emu_read<elem_t>(dir + "/rpb.bin", rl) : std::vector<elem_t>();
    const auto dout = emu_read<elem_t>(dir + "/dout.bin", vl);
    const auto out_saved = emu_read<elem_t>(dir + "/out_saved.bin", vl);
    const auto lse_saved = emu_read<float>(dir + "/lse_saved.bin", ll);
    const elem_t* rp = has_rpb ? rpb.data() : nullptr;

    std::vector<elem_t> out(vl);
    std::vector<float> lse(ll);
    emu_launch(blocks, threads, [&] { na_fwd(p, q.data(), k.data(), v.data(), rp, out.data(), lse.data()); });
    emu_write(dir + "/out.bin", out);
    emu_write(dir + "/lse.bin", lse);

    std::vector<elem_t> dq(qk), dk(qk), dv(vl);
    std::vector<float> delta(ll);
    std::vector<float> part(want_drpb ? (size_t)blocks * NA_WARPS * NA_RPB_PER_HEAD : 0, 12345.0f);
    float* pp = want_drpb ? part.data() : nullptr;
    emu_launch(blocks, threads, [&] {
        na_bwd_q(p, q.data(), k.data(), v.data(), rp, out_saved.data(), dout.data(),
                 lse_saved.data(), dq.data(), delta.data(), pp);
    });
    emu_launch(blocks, threads, [&] {
        na_bwd_kv(p, q.data(), k.data(), v.data(), rp, dout.data(), lse_saved.data(),
                  delta.data(), dk.data(), dv.data());
    });
    emu_write(dir + "/dq.bin", dq);
    emu_write(dir + "/dk.bin", dk);
    emu_write(dir + "/dv.bin", dv);
    if (want_drpb) {
        std::vector<elem_t> drpb(rl);
        const unsigned rblocks = (unsigned)((rl + 255) / 256);
        emu_launch(rblocks, 256, [&] {
            na_rpb_reduce(part.data(), p.batch, p.heads, (int)tiles, drpb.data());
        });
        emu_write(dir + "/drpb.bin", drpb);
    }
    return 0;
}
