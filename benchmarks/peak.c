/* Instruction peaks of this CPU, per thread count: the ceiling against which docs/benchmarks.md states each kernel
 * as a fraction. Independent accumulators in registers (no memory), one instruction kind at a time; built with
 * -march=native by benchmarks/cpu_ceiling.py, so a kind the CPU lacks is not measured.
 *   gcc -O3 -march=native -fopenmp benchmarks/peak.c -o peak && ./peak 2   (prints one "kind value unit" per line) */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define CHAINS 12
#define STEPS 20000000L

/* Runs body STEPS times on `threads` threads, three times; result: the best operations per second (ops_per_step
 * per thread-step; the first run also wakes the threads and the clock). */
#define MEASURE(result, threads, ops_per_step, init, body, finish)                 \
    result = 0;                                                                      \
    for (int again = 0; again < 3; ++again) {                                        \
        double start = omp_get_wtime();                                              \
        double sink = 0;                                                             \
        _Pragma("omp parallel num_threads(threads) reduction(+ : sink)") {           \
            init;                                                                    \
            for (long s = 0; s < STEPS / CHAINS; ++s) { body; }                      \
            finish;                                                                  \
        }                                                                            \
        double elapsed = omp_get_wtime() - start;                                    \
        if (sink == 1234.5) printf(" ");  /* keeps the sums live */                  \
        double rate = (double)STEPS * (threads) * (ops_per_step) / elapsed;          \
        if (rate > result) result = rate;                                            \
    }

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    double r;
#if defined(__AVX512F__)
    MEASURE(r, threads, 32, __m512 a[CHAINS]; __m512 x = _mm512_set1_ps(0.9999f); __m512 y = _mm512_set1_ps(0.0001f);
            for (int i = 0; i < CHAINS; ++i) a[i] = _mm512_set1_ps((float)i),
            for (int i = 0; i < CHAINS; ++i) a[i] = _mm512_fmadd_ps(a[i], x, y);
            __asm__ volatile("" : "+v"(x)), for (int i = 0; i < CHAINS; ++i) sink += _mm512_reduce_add_ps(a[i]));
    printf("fp32_fma_avx512 %.1f GFLOP/s\n", r / 1e9);
#elif defined(__AVX2__) && defined(__FMA__)
    MEASURE(r, threads, 16, __m256 a[CHAINS]; __m256 x = _mm256_set1_ps(0.9999f); __m256 y = _mm256_set1_ps(0.0001f);
            for (int i = 0; i < CHAINS; ++i) a[i] = _mm256_set1_ps((float)i),
            for (int i = 0; i < CHAINS; ++i) a[i] = _mm256_fmadd_ps(a[i], x, y);
            __asm__ volatile("" : "+x"(x)), for (int i = 0; i < CHAINS; ++i) sink += a[i][0]);
    printf("fp32_fma_avx2 %.1f GFLOP/s\n", r / 1e9);
#endif
#if defined(__AVX512BF16__)
    MEASURE(r, threads, 64, __m512 a[CHAINS]; __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80);
            __m512bh y = (__m512bh)_mm512_set1_epi16(0x3f81); for (int i = 0; i < CHAINS; ++i) a[i] = _mm512_set1_ps((float)i),
            for (int i = 0; i < CHAINS; ++i) a[i] = _mm512_dpbf16_ps(a[i], x, y);
            __asm__ volatile("" : "+v"(x)), for (int i = 0; i < CHAINS; ++i) sink += _mm512_reduce_add_ps(a[i]));
    printf("bf16_dot_avx512 %.1f GFLOP/s\n", r / 1e9);
#endif
#if defined(__AVX512VNNI__)
    MEASURE(r, threads, 128, __m512i a[CHAINS]; __m512i x = _mm512_set1_epi8(1); __m512i y = _mm512_set1_epi8(2);
            for (int i = 0; i < CHAINS; ++i) a[i] = _mm512_set1_epi32(i),
            for (int i = 0; i < CHAINS; ++i) a[i] = _mm512_dpbusd_epi32(a[i], x, y);
            __asm__ volatile("" : "+v"(x)), for (int i = 0; i < CHAINS; ++i) sink += _mm512_reduce_add_epi32(a[i]));
    printf("int8_dot_avx512vnni %.1f GOP/s\n", r / 1e9);
#endif
    /* Streaming reads of 512 MB (beyond any cache), split between the threads: decode's floor reads every weight
     * once per token. */
    const size_t bytes = (size_t)512 << 20, count = bytes / sizeof(long);
    long *data = malloc(bytes);
    for (size_t i = 0; i < count; ++i) data[i] = (long)i;
    double best = 0;
    for (int again = 0; again < 3; ++again) {
        long total = 0;
        double start = omp_get_wtime();
#pragma omp parallel for num_threads(threads) reduction(+ : total)
        for (size_t i = 0; i < count; ++i) total += data[i];
        double rate = bytes / (omp_get_wtime() - start);
        if (total == 42) printf(" ");
        if (rate > best) best = rate;
    }
    free(data);
    printf("read_bandwidth %.1f GB/s\n", best / 1e9);
    return 0;
}
