/*
 * demo.c: a toy log processor for the memtrace demo (scripts/demo).
 *
 * It formats 100,000 log lines, keeps every 500th one "for later", and prints a count. Two things
 * in it are worth finding with memtrace:
 *
 *   - a hot allocation site: format_line() allocates a fresh 64-byte buffer for every line, which
 *     the caller frees at once (100,000 temporary allocations: `top --by temporary`);
 *   - a leak: remember() keeps lines in a list that main() never frees (200 records and 200 copies
 *     of their lines: `leaks`).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct record {
    char *line;
    struct record *next;
};

/* The hot site: one malloc per line. A reused buffer would do. */
static char *format_line(int i) {
    char *buf = malloc(64);
    snprintf(buf, 64, "GET /item/%d from host-%d", i, i % 7);
    return buf;
}

/* The leak: records are pushed onto a list that nobody frees. */
static struct record *remember(struct record *list, const char *line) {
    struct record *r = malloc(sizeof *r);
    r->line = strdup(line);
    r->next = list;
    return r;
}

int main(void) {
    struct record *kept = NULL;
    size_t bytes = 0;
    int nkept = 0;
    for (int i = 0; i < 100000; i++) {
        char *line = format_line(i);
        bytes += strlen(line);
        if (i % 500 == 0) {
            kept = remember(kept, line);
            nkept++;
        }
        free(line);
    }
    printf("processed 100000 lines (%zu bytes), kept %d\n", bytes, nkept);
    return 0; /* `kept` is never freed: memtrace reports it as leaked */
}
