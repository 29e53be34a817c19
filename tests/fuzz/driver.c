/*
 * Standalone driver for the fuzz target in fuzz_ce.c, for compilers without libFuzzer (gcc).
 *
 *   fuzz_ce [-seconds S] [-runs N] [-seed K] [-max-len L] [FILE...]
 *
 * With FILE arguments, each file is replayed once as an input.  Otherwise pseudo-random inputs
 * (xorshift64* from the seed) are fed until S seconds have passed or N inputs have run,
 * whichever comes first (defaults: 10 seconds, no count limit).  On a crash or a violated
 * invariant the input is written to ./fuzz-crash-<seed>-<run>.bin (or into $GS_FUZZ_ARTIFACTS)
 * for replay.  The last line printed on success is "fuzz: N runs ...".
 */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Present when linked with AddressSanitizer: runs before a sanitizer report ends the process. */
extern void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

static const uint8_t *current_data;
static size_t current_size;
static char artifact_path[4096];

static void save_input(void)
{
    /* async-signal-safe: open/write/close only */
    int fd;
    if (current_data == NULL || artifact_path[0] == '\0') {
        return;
    }
    fd = open(artifact_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        size_t done = 0;
        while (done < current_size) {
            const ssize_t n = write(fd, current_data + done, current_size - done);
            if (n <= 0) {
                break;
            }
            done += (size_t)n;
        }
        close(fd);
        (void)!write(2, "fuzz: input saved to ", 21);
        (void)!write(2, artifact_path, strlen(artifact_path));
        (void)!write(2, "\n", 1);
    }
    current_data = NULL;
}

static void on_signal(int signal_number)
{
    save_input();
    signal(signal_number, SIG_DFL);
    raise(signal_number);
}

static uint64_t next_random(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * UINT64_C(2685821657736338717);
}

static double now_seconds(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int replay(const char *path)
{
    FILE *file = fopen(path, "rb");
    uint8_t *data;
    long size;
    if (file == NULL || fseek(file, 0, SEEK_END) != 0 || (size = ftell(file)) < 0) {
        fprintf(stderr, "fuzz: cannot read %s\n", path);
        return 2;
    }
    rewind(file);
    data = (uint8_t *)malloc(size > 0 ? (size_t)size : 1);
    if (data == NULL || fread(data, 1, (size_t)size, file) != (size_t)size) {
        fprintf(stderr, "fuzz: cannot read %s\n", path);
        return 2;
    }
    fclose(file);
    current_data = data;
    current_size = (size_t)size;
    LLVMFuzzerTestOneInput(data, (size_t)size);
    current_data = NULL;
    free(data);
    printf("fuzz: replayed %s\n", path);
    return 0;
}

int main(int argc, char **argv)
{
    double seconds = 10.0;
    long long runs = -1, done = 0;
    unsigned long long seed = 1;
    size_t max_len = 4096;
    const char *artifacts = getenv("GS_FUZZ_ARTIFACTS");
    int i, files = 0, status = 0;
    double start;
    uint8_t *data;
    uint64_t state;
    size_t bytes_total = 0;

    signal(SIGSEGV, on_signal);
    signal(SIGBUS, on_signal);
    signal(SIGFPE, on_signal);
    signal(SIGILL, on_signal);
    signal(SIGABRT, on_signal);
    if (__sanitizer_set_death_callback != NULL) {
        __sanitizer_set_death_callback(save_input);
    }
    for (i = 1; i < argc; ++i) {
        if (strcmp(argv[i], "-seconds") == 0 && i + 1 < argc) {
            seconds = atof(argv[++i]);
        } else if (strcmp(argv[i], "-runs") == 0 && i + 1 < argc) {
            runs = atoll(argv[++i]);
        } else if (strcmp(argv[i], "-seed") == 0 && i + 1 < argc) {
            seed = strtoull(argv[++i], NULL, 0);
        } else if (strcmp(argv[i], "-max-len") == 0 && i + 1 < argc) {
            max_len = (size_t)atoll(argv[++i]);
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: %s [-seconds S] [-runs N] [-seed K] [-max-len L] [FILE...]\n", argv[0]);
            return 2;
        } else {
            files += 1;
        }
    }
    if (files > 0) {
        artifact_path[0] = '\0';
        for (i = 1; i < argc; ++i) {
            if (argv[i][0] == '-') {
                ++i;
                continue;
            }
            status |= replay(argv[i]);
        }
        return status;
    }

    data = (uint8_t *)malloc(max_len > 0 ? max_len : 1);
    if (data == NULL) {
        return 3;
    }
    state = seed * UINT64_C(0x9E3779B97F4A7C15) + 1;
    start = now_seconds();
    while ((runs < 0 || done < runs) && now_seconds() - start < seconds) {
        /* short inputs are common: most decoded cases need only a few hundred bytes */
        const size_t size = (size_t)(next_random(&state) % (max_len + 1));
        size_t j;
        for (j = 0; j < size; j += 8) {
            const uint64_t word = next_random(&state);
            const size_t n = size - j < 8 ? size - j : 8;
            memcpy(data + j, &word, n);
        }
        snprintf(artifact_path, sizeof artifact_path, "%s%sfuzz-crash-%llu-%lld.bin",
                 artifacts != NULL ? artifacts : "", artifacts != NULL ? "/" : "", seed, done);
        current_data = data;
        current_size = size;
        LLVMFuzzerTestOneInput(data, size);
        current_data = NULL;
        bytes_total += size;
        done += 1;
    }
    free(data);
    printf("fuzz: %lld runs in %.1f s (seed %llu, %zu bytes), no crash\n", done,
           now_seconds() - start, seed, bytes_total);
    return 0;
}
