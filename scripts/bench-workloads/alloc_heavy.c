/* Allocation-heavy benchmark workload for scripts/bench: every thread walks a deep, varied call
 * chain (15-30 frames) and at the bottom allocates, reallocs and frees blocks of mixed sizes while
 * keeping a bounded live set.
 *
 * usage: alloc_heavy THREADS ITERATIONS [SIZE_RANGE]
 * With SIZE_RANGE, every size is drawn uniformly from 1..SIZE_RANGE bytes (byte-exact random sizes:
 * about one distinct (size, stack) pair per call, the case that exhausts tools which intern those
 * pairs); without it, sizes are mostly small, as in typical programs.
 * Prints the number of allocation calls it made (malloc + calloc + realloc), for cross-checks.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIVE 4096

static long iterations;
static unsigned size_range;

struct worker {
    void *live[LIVE];
    unsigned rng;
    long calls;
};

static unsigned next_rand(struct worker *w) {
    w->rng = w->rng * 1103515245u + 12345u;
    return w->rng >> 8;
}

__attribute__((noinline)) static void leaf(struct worker *w) {
    unsigned r = next_rand(w);
    unsigned slot = r % LIVE;
    size_t size = size_range ? 1 + (next_rand(w) % size_range)
                             : 8 + (r % 7 == 0 ? r % 4096 : r % 256);
    if (w->live[slot] && r % 5 == 0) {
        void *p = realloc(w->live[slot], size * 2);
        if (p) w->live[slot] = p;
    } else {
        free(w->live[slot]);
        w->live[slot] = (r % 3 == 0) ? calloc(1, size) : malloc(size);
    }
    memset(w->live[slot], 1, 8);
    w->calls++;
}

/* Recursion through a few distinct functions so that stacks vary in depth and in path. */
__attribute__((noinline)) static void step_a(struct worker *w, int depth);
__attribute__((noinline)) static void step_b(struct worker *w, int depth);

__attribute__((noinline)) static void step_a(struct worker *w, int depth) {
    if (depth == 0) { leaf(w); return; }
    if (next_rand(w) % 4 == 0) step_b(w, depth - 1); else step_a(w, depth - 1);
    __asm__ volatile("" ::: "memory");
}

__attribute__((noinline)) static void step_b(struct worker *w, int depth) {
    if (depth == 0) { leaf(w); return; }
    step_a(w, depth - 1);
    __asm__ volatile("" ::: "memory");
}

static void *run(void *arg) {
    struct worker *w = arg;
    for (long i = 0; i < iterations; i++) step_a(w, 12 + (int)(next_rand(w) % 16));
    for (int i = 0; i < LIVE; i++) free(w->live[i]);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 1;
    iterations = argc > 2 ? atol(argv[2]) : 1000000;
    size_range = argc > 3 ? (unsigned)atol(argv[3]) : 0;
    pthread_t tids[64];
    struct worker *ws = calloc((size_t)threads, sizeof(struct worker));
    for (int t = 0; t < threads && t < 64; t++) {
        ws[t].rng = 1234567u * (unsigned)(t + 1);
        pthread_create(&tids[t], NULL, run, &ws[t]);
    }
    long calls = 0;
    for (int t = 0; t < threads && t < 64; t++) {
        pthread_join(tids[t], NULL);
        calls += ws[t].calls;
    }
    printf("%ld\n", calls);
    free(ws);
    return 0;
}
