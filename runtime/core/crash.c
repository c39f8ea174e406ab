/* crash.c — see crash.h. The handler runs in a process that is already
 * broken: it reads the thread's record, formats into a stack buffer with
 * its own routines and calls only write(2), sigaction(2) and raise(3). */
#include "core/crash.h"

#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static _Thread_local const fs_call *volatile current;

const fs_call *fs_crash_current(void) { return current; }

const fs_call *fs_crash_set(const fs_call *c) {
    const fs_call *outer = current;
    current = c;
    return outer;
}

static const struct {
    int sig;
    const char *name;
} FATAL[] = {
    {SIGSEGV, "Segmentation fault"}, {SIGBUS, "Bus error"},     {SIGFPE, "Floating point exception"},
    {SIGILL, "Illegal instruction"}, {SIGABRT, "Aborted"},
};
#define N_FATAL (sizeof FATAL / sizeof FATAL[0])

static struct sigaction previous[N_FATAL]; /* what was there before (a sanitizer's handler) */

/* A bounded append: the strings may be the plugin's, and the plugin is broken. */
typedef struct line {
    char buf[640];
    size_t n;
} line;

static void put(line *l, const char *s) {
    for (size_t i = 0; s && s[i] && i < 200 && l->n + 1 < sizeof l->buf; i++) l->buf[l->n++] = s[i];
}

static void put_int(line *l, int v) {
    char d[16];
    int k = 0;
    unsigned u = v < 0 ? 0u - (unsigned)v : (unsigned)v;
    do d[k++] = (char)('0' + u % 10); while ((u /= 10) && k < 15);
    if (v < 0) put(l, "-");
    while (k) {
        char c[2] = {d[--k], 0};
        put(l, c);
    }
}

static void on_fatal(int sig, siginfo_t *info, void *context) {
    (void)context;
    size_t i = 0;
    while (i < N_FATAL && FATAL[i].sig != sig) i++;
    line l = {.n = 0};
    put(&l, "fsrun: ");
    put(&l, i < N_FATAL ? FATAL[i].name : "fatal signal");
    const fs_call *c = current;
    if (c) {
        put(&l, " in ");
        if (c->kind) {
            put(&l, c->kind);
            put(&l, " ");
        }
        put(&l, "plugin '");
        put(&l, c->plugin);
        put(&l, "'");
        if (c->layer >= 0) {
            put(&l, " (layer ");
            put_int(&l, c->layer);
            put(&l, ")");
        }
        put(&l, " during ");
        put(&l, c->call);
        put(&l, ": the plugin crashed fsrun; fix it, or take it off the graph and the plugin path\n");
    } else {
        put(&l, " outside any plugin call: a bug in fsrun (a core dump, where enabled, shows where)\n");
    }
    ssize_t w = write(STDERR_FILENO, l.buf, l.n);
    (void)w;
    /* the signal's own action: the default (SA_RESETHAND put it back), or
     * the handler that was there before ours (a sanitizer's report) */
    if (i < N_FATAL && previous[i].sa_handler != SIG_DFL && previous[i].sa_handler != SIG_IGN)
        sigaction(sig, &previous[i], NULL);
    /* a fault the kernel raised happens again when the instruction reruns,
     * where that action sees it as it was; a sent signal is sent again */
    if (info->si_code <= 0 || sig == SIGABRT) raise(sig);
}

void fs_crash_install(void) {
    /* its own stack: a stack overflow leaves none to run the handler on */
    static char alt[1 << 16];
    stack_t ss = {.ss_sp = alt, .ss_size = sizeof alt, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    for (size_t i = 0; i < N_FATAL; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_fatal;
        sigemptyset(&sa.sa_mask);
        sa.sa_flags = SA_SIGINFO | SA_RESETHAND | SA_ONSTACK;
        sigaction(FATAL[i].sig, &sa, &previous[i]);
    }
}
