// A small driver of every CUDA launcher for compute-sanitizer (memcheck, racecheck): exact-size
// device buffers, every dtype, both target kinds, weights, softcap, every reduction, in place,
// a bad target.  Exit status 0 when every call returned GS_OK (and the bad target was reported).
#include "../../generated/cuda/gradsmith_ce.cuh"

#include <cstdio>
#include <cstring>
#include <vector>

#define CHECK(call) do { cudaError_t e = (call); if (e != cudaSuccess) { \
    std::fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e)); return 1; } } while (0)

template <typename T> T from_float(float x);
template <> float from_float<float>(float x) { return x; }
template <> double from_float<double>(float x) { return x; }
template <> __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __half from_float<__half>(float x) { return __float2half(x); }

template <typename T, typename R, typename Index, typename Probs>
int run(const char *name, Index index, Probs probs) {
    const int64_t shapes[][2] = {{5, 3}, {33, 64}, {3, 1500}, {2, 4099}};
    for (const auto &shape : shapes) {
        const int64_t n = shape[0], c = shape[1];
        std::vector<T> host_logits(n * c), host_probs(n * c);
        std::vector<int64_t> host_targets(n);
        std::vector<R> host_weight(c), host_grad(n);
        for (int64_t i = 0; i < n * c; ++i) {
            host_logits[i] = from_float<T>((float)((i * 7919) % 23) / 3.0f - 3.0f);
            host_probs[i] = from_float<T>(1.0f / (float)c);
        }
        for (int64_t r = 0; r < n; ++r) { host_targets[r] = r % 4 == 3 ? -100 : (r * 5) % c; host_grad[r] = (R)(0.5 + r); }
        for (int64_t j = 0; j < c; ++j) host_weight[j] = (R)(0.25 + (j % 3));
        T *logits, *dlogits, *target_probs; int64_t *targets, *status; R *weight, *grad, *loss, *lse; void *workspace;
        const size_t work = gs_ce_cuda_workspace_bytes(n);
        CHECK(cudaMalloc(&logits, n * c * sizeof(T))); CHECK(cudaMalloc(&dlogits, n * c * sizeof(T)));
        CHECK(cudaMalloc(&target_probs, n * c * sizeof(T))); CHECK(cudaMalloc(&targets, n * sizeof(int64_t)));
        CHECK(cudaMalloc(&status, sizeof(int64_t))); CHECK(cudaMalloc(&weight, c * sizeof(R)));
        CHECK(cudaMalloc(&grad, n * sizeof(R))); CHECK(cudaMalloc(&loss, n * sizeof(R)));
        CHECK(cudaMalloc(&lse, n * sizeof(R))); CHECK(cudaMalloc(&workspace, work));
        CHECK(cudaMemcpy(logits, host_logits.data(), n * c * sizeof(T), cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(target_probs, host_probs.data(), n * c * sizeof(T), cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(targets, host_targets.data(), n * sizeof(int64_t), cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(weight, host_weight.data(), c * sizeof(R), cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(grad, host_grad.data(), n * sizeof(R), cudaMemcpyHostToDevice));
        for (int reduction = 0; reduction < 3; ++reduction)
            for (int option = 0; option < 4; ++option) {
                gs_ce_params p = {-100, reduction, 0, 0.1, option & 1 ? 1e-3 : 0.0, option & 2 ? 20.0 : 0.0};
                const R *w = option == 3 ? nullptr : weight;
                const R *g = reduction == 0 ? grad : nullptr;
                T *out = option == 1 ? logits : dlogits;  // option 1 writes in place
                int code = index(logits, c, targets, w, n, c, &p, g, loss, out, c, lse, status, workspace, 0);
                code |= probs(logits, c, target_probs, c, w, n, c, &p, g, loss, out, c, lse, workspace, 0);
                CHECK(cudaDeviceSynchronize());
                if (code != GS_OK) { std::fprintf(stderr, "%s %lldx%lld: status %d\n", name, (long long)n, (long long)c, code); return 1; }
            }
        host_targets[n - 1] = c + 5;  // a bad target: reported through the status word
        CHECK(cudaMemcpy(targets, host_targets.data(), n * sizeof(int64_t), cudaMemcpyHostToDevice));
        gs_ce_params p = {-100, 1, 0, 0.0, 0.0, 0.0};
        index(logits, c, targets, weight, n, c, &p, nullptr, loss, dlogits, c, lse, status, workspace, 0);
        int64_t bad = -1;
        CHECK(cudaMemcpy(&bad, status, sizeof bad, cudaMemcpyDeviceToHost));
        if (bad != n - 1) { std::fprintf(stderr, "%s: bad row %lld, expected %lld\n", name, (long long)bad, (long long)(n - 1)); return 1; }
        cudaFree(logits); cudaFree(dlogits); cudaFree(target_probs); cudaFree(targets); cudaFree(status);
        cudaFree(weight); cudaFree(grad); cudaFree(loss); cudaFree(lse); cudaFree(workspace);
    }
    std::printf("%s: ok\n", name);
    return 0;
}

int main() {
    int failed = 0;
    failed |= run<float, float>("f32", gs_ce_cuda_index_f32, gs_ce_cuda_probs_f32);
    failed |= run<double, double>("f64", gs_ce_cuda_index_f64, gs_ce_cuda_probs_f64);
    failed |= run<__nv_bfloat16, float>("bf16", gs_ce_cuda_index_bf16, gs_ce_cuda_probs_bf16);
    failed |= run<__half, float>("f16", gs_ce_cuda_index_f16, gs_ce_cuda_probs_f16);
    return failed;
}
