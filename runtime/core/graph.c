/* graph.c — INI graph parsing (inih), --set overrides and schema resolution.
 *
 * Syntax decisions, all checked by tests/unit/test_graph.c:
 *  - Lines are fed to inih one at a time by our own reader, which counts
 *    them: Debian's inih has no line numbers in its handler.
 *  - Leading whitespace is dropped before inih sees a line, so indentation
 *    is allowed and inih's multi-line continuation values are disabled: an
 *    indented line without '=' is an error ("continuation lines are not
 *    supported") rather than text silently glued onto the previous value.
 *  - Section headers are handled in the reader, because this inih does not
 *    call the handler for a section without keys. Text after ']' other than
 *    a comment is an error; whitespace inside the brackets is trimmed.
 *  - Comments: whole-line ';' and '#'; inline comments start at a ';'
 *    preceded by whitespace ("k = 3 ; note"), inih's default. A ';' not
 *    preceded by whitespace is part of the value. '#' is inline only at the
 *    start of a line.
 *  - "key: value" is accepted like "key = value" (inih).
 *  - A value wrapped in one matching pair of double quotes is unquoted, so
 *    leading/trailing spaces can be kept: name = " a ".
 *  - Lines may be at most INI_MAX_LINE - 2 characters (198 for Debian's
 *    build); longer ones are an error rather than being split by inih.
 *
 * fs_config copies everything it keeps, so it outlives the graph and is
 * unaffected by later fs_graph_set calls. */
#include "core/graph.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <ini.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/host.h"

#define SET_FILE "--set"
/* Room inih's line buffer leaves for text: the '\n' and the NUL. */
#define MAX_TEXT (INI_MAX_LINE - 2)

struct fs_graph {
    char *path;
    char *dir;
    fs_graph_entry *entries;
    size_t n, cap;
    char **sections; /* first-appearance order, including empty ones */
    size_t n_sections, cap_sections;
    char **files; /* the entries' file names that are not path or "--set" (copied entries) */
    size_t n_files, cap_files;
};

static const char *const FIXED_SECTIONS[] = {"model", "attention", "parallel", "distill", "data",
                                             "train", "generate",  "run",      "serve",   "backend"};
#define N_FIXED (sizeof FIXED_SECTIONS / sizeof FIXED_SECTIONS[0])
static const char KNOWN_SECTIONS[] = "model, attention, layer.N, layer.A-B, parallel, distill, "
                                     "distill.stage.N, data, train, generate, run, serve, backend";


static char *dupn(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static char *dup_str(const char *s) { return dupn(s, strlen(s)); }

/* Trims [*b, *e) in place. */
static void trim(const char **b, const char **e) {
    while (*b < *e && isspace((unsigned char)**b)) (*b)++;
    while (*e > *b && isspace((unsigned char)(*e)[-1])) (*e)--;
}

/* Removes one matching pair of surrounding double quotes. */
static void unquote(const char **b, const char **e) {
    if (*e - *b >= 2 && **b == '"' && (*e)[-1] == '"') {
        (*b)++;
        (*e)--;
    }
}

/* ---- edit distance and suggestions ---- */

size_t fs_edit_distance(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    size_t *row = malloc((lb + 1) * sizeof *row);
    if (!row) return la > lb ? la : lb;
    for (size_t j = 0; j <= lb; j++) row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0]; /* row[i-1][j-1] */
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best) best = up + 1;
            if (row[j - 1] + 1 < best) best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    size_t d = row[lb];
    free(row);
    return d;
}

/* Close enough to be a typo: within a third of the word, at least 2. */
static int is_close(const char *word, const char *cand, size_t *best) {
    size_t d = fs_edit_distance(word, cand);
    size_t limit = strlen(word) / 3 > 2 ? strlen(word) / 3 : 2;
    if (d <= limit && d < *best) {
        *best = d;
        return 1;
    }
    return 0;
}

/* ---- section names ---- */

/* Non-negative decimal without sign or leading zeros, so every layer has
 * one spelling: [layer.02] and [layer.2] must not be different sections. */
static int parse_index(const char *s, const char *end, int *out) {
    if (s == end || (*s == '0' && end - s > 1)) return -1;
    long v = 0;
    for (; s < end; s++) {
        if (!isdigit((unsigned char)*s)) return -1;
        v = v * 10 + (*s - '0');
        if (v > 1000000000L) return -1;
    }
    *out = (int)v;
    return 0;
}

int fs_graph_layer_range(const char *section, int *first, int *last) {
    if (!section || strncmp(section, "layer.", 6) != 0) return -1;
    const char *s = section + 6, *end = s + strlen(s);
    const char *dash = strchr(s, '-');
    int a, b;
    if (dash) {
        if (parse_index(s, dash, &a) || parse_index(dash + 1, end, &b) || a > b) return -1;
    } else {
        if (parse_index(s, end, &a)) return -1;
        b = a;
    }
    if (first) *first = a;
    if (last) *last = b;
    return 0;
}

static int section_known(const char *name) {
    for (size_t i = 0; i < N_FIXED; i++)
        if (strcmp(name, FIXED_SECTIONS[i]) == 0) return 1;
    if (fs_graph_layer_range(name, NULL, NULL) == 0) return 1;
    int n;
    if (strncmp(name, "distill.stage.", 14) == 0 && parse_index(name + 14, name + strlen(name), &n) == 0 &&
        n >= 1)
        return 1;
    return 0;
}

/* The part of an unknown-section message after "[name]: unknown section". */
static void section_hint(const char *name, char *buf, size_t cap) {
    if (strncmp(name, "layer", 5) == 0) {
        snprintf(buf, cap, "; layer sections are [layer.N] or [layer.A-B] with A <= B");
        return;
    }
    if (strncmp(name, "distill.", 8) == 0) {
        snprintf(buf, cap, "; distill stage sections are [distill.stage.N] with N >= 1");
        return;
    }
    size_t best = (size_t)-1;
    const char *pick = NULL;
    for (size_t i = 0; i < N_FIXED; i++)
        if (is_close(name, FIXED_SECTIONS[i], &best)) pick = FIXED_SECTIONS[i];
    if (pick)
        snprintf(buf, cap, "; did you mean [%s]?", pick);
    else
        snprintf(buf, cap, "; known sections: %s", KNOWN_SECTIONS);
}

/* ---- graph storage ---- */

static fs_graph *graph_new(const char *path, const char *name) {
    fs_graph *g = calloc(1, sizeof *g);
    if (!g) return NULL;
    g->path = dup_str(path ? path : name);
    if (path) {
        const char *slash = strrchr(path, '/');
        g->dir = !slash ? dup_str(".") : slash == path ? dup_str("/") : dupn(path, (size_t)(slash - path));
    } else {
        g->dir = dup_str(".");
    }
    if (!g->path || !g->dir) {
        fs_graph_destroy(g);
        return NULL;
    }
    return g;
}

void fs_graph_destroy(fs_graph *g) {
    if (!g) return;
    for (size_t i = 0; i < g->n; i++) {
        free((char *)g->entries[i].section);
        free((char *)g->entries[i].key);
        free((char *)g->entries[i].value);
    }
    for (size_t i = 0; i < g->n_sections; i++) free(g->sections[i]);
    for (size_t i = 0; i < g->n_files; i++) free(g->files[i]);
    free(g->entries);
    free(g->sections);
    free(g->files);
    free(g->path);
    free(g->dir);
    free(g);
}

static int grow(void **arr, size_t *cap, size_t need, size_t size) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, c * size);
    if (!p) return -1;
    *arr = p;
    *cap = c;
    return 0;
}

/* Returns the graph's copy of the name, or NULL when out of memory. */
static const char *add_section(fs_graph *g, const char *name) {
    for (size_t i = 0; i < g->n_sections; i++)
        if (strcmp(g->sections[i], name) == 0) return g->sections[i];
    if (grow((void **)&g->sections, &g->cap_sections, g->n_sections + 1, sizeof *g->sections)) return NULL;
    if (!(g->sections[g->n_sections] = dup_str(name))) return NULL;
    return g->sections[g->n_sections++];
}

static int add_entry(fs_graph *g, const char *section, const char *key, const char *value, const char *file,
                     int line) {
    if (!add_section(g, section)) return -1;
    if (grow((void **)&g->entries, &g->cap, g->n + 1, sizeof *g->entries)) return -1;
    fs_graph_entry *e = &g->entries[g->n];
    e->section = dup_str(section);
    e->key = dup_str(key);
    e->value = dup_str(value);
    e->file = file;
    e->line = line;
    if (!e->section || !e->key || !e->value) {
        free((char *)e->section);
        free((char *)e->key);
        free((char *)e->value);
        return -1;
    }
    g->n++;
    return 0;
}

/* The graph's own copy of a file name for its entries: its path, "--set",
 * or a copy kept in g->files (entries copied from another graph). */
static const char *intern_file(fs_graph *g, const char *file) {
    if (!strcmp(file, g->path)) return g->path;
    if (!strcmp(file, SET_FILE)) return SET_FILE;
    for (size_t i = 0; i < g->n_files; i++)
        if (!strcmp(g->files[i], file)) return g->files[i];
    if (grow((void **)&g->files, &g->cap_files, g->n_files + 1, sizeof *g->files)) return NULL;
    if (!(g->files[g->n_files] = dup_str(file))) return NULL;
    return g->files[g->n_files++];
}

const char *fs_graph_path(const fs_graph *g) { return g ? g->path : NULL; }
const char *fs_graph_dir(const fs_graph *g) { return g ? g->dir : NULL; }
size_t fs_graph_count(const fs_graph *g) { return g ? g->n : 0; }

const fs_graph_entry *fs_graph_at(const fs_graph *g, size_t i) {
    return g && i < g->n ? &g->entries[i] : NULL;
}

const fs_graph_entry *fs_graph_find(const fs_graph *g, const char *section, const char *key) {
    if (!g || !section || !key) return NULL;
    for (size_t i = 0; i < g->n; i++)
        if (strcmp(g->entries[i].section, section) == 0 && strcmp(g->entries[i].key, key) == 0)
            return &g->entries[i];
    return NULL;
}

int fs_graph_has_section(const fs_graph *g, const char *section) {
    if (!g || !section) return 0;
    for (size_t i = 0; i < g->n_sections; i++)
        if (strcmp(g->sections[i], section) == 0) return 1;
    return 0;
}

/* ---- parsing ---- */

typedef struct parse_state {
    fs_graph *g;
    const char *pos, *end;
    int line;          /* the line last handed to inih */
    const char *section; /* current section (owned by g->sections); NULL before the first */
    int failed;        /* our own error is in err; stop reading */
    int status;
    fs_error err;
} parse_state;

/* Records our own error; returns 0, inih's "handler failed". */
static int fail(parse_state *st, int status, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    st->failed = 1;
    st->status = status;
    st->err.status = status;
    vsnprintf(st->err.message, sizeof st->err.message, fmt, ap);
    va_end(ap);
    return 0;
}

static int syntax_error(parse_state *st, int indented) {
    return fail(st, FS_ERR_INVALID, "%s:%d: expected 'key = value' or '[section]'%s", st->g->path, st->line,
         indented ? " (continuation lines are not supported)" : "");
}

/* True when [b, e) has a key delimiter before any inline comment, scanning
 * like inih so that what we let through is what inih will accept. */
static int has_delimiter(const char *b, const char *e) {
    int was_space = 0;
    for (; b < e; b++) {
        if (*b == '=' || *b == ':') return 1;
        if (was_space && *b == ';') return 0;
        was_space = isspace((unsigned char)*b);
    }
    return 0;
}

/* A section header line [b, e) (trimmed, starting with '['). */
static void on_header(parse_state *st, const char *b, const char *e) {
    const char *close = memchr(b, ']', (size_t)(e - b));
    const char *rest = close ? close + 1 : e;
    while (rest < e && isspace((unsigned char)*rest)) rest++;
    if (!close || (rest < e && *rest != ';' && *rest != '#')) {
        syntax_error(st, 0);
        return;
    }
    const char *nb = b + 1, *ne = close;
    trim(&nb, &ne);
    char name[INI_MAX_LINE];
    snprintf(name, sizeof name, "%.*s", (int)(ne - nb), nb);
    if (!section_known(name)) {
        char hint[384];
        section_hint(name, hint, sizeof hint);
        fail(st, FS_ERR_INVALID, "%s:%d: [%s]: unknown section%s", st->g->path, st->line, name, hint);
    } else if (!(st->section = add_section(st->g, name))) {
        fail(st, FS_ERR_NOMEM, "%s: out of memory", st->g->path);
    }
}

/* inih reader: hands over one line at a time, after dealing with comments,
 * indentation and section headers itself (see the file comment). */
static char *next_line(char *buf, int num, void *user) {
    parse_state *st = user;
    if (st->failed || st->pos >= st->end) return NULL;
    const char *b = st->pos, *nl = memchr(b, '\n', (size_t)(st->end - b));
    const char *e = nl ? nl : st->end;
    st->pos = nl ? nl + 1 : st->end;
    st->line++;
    if (st->line == 1 && e - b >= 3 && memcmp(b, "\xEF\xBB\xBF", 3) == 0) b += 3;
    const char *raw = b;
    trim(&b, &e);
    if (b == e || *b == ';' || *b == '#') {
        snprintf(buf, (size_t)num, "\n"); /* inih counts it; nothing to parse */
        return buf;
    }
    if (e - b > num - 2)
        fail(st, FS_ERR_INVALID, "%s:%d: line is longer than %d characters", st->g->path, st->line, num - 2);
    else if (*b == '[')
        on_header(st, b, e);
    else if (!has_delimiter(b, e))
        syntax_error(st, b > raw);
    if (st->failed) return NULL;
    if (*b == '[')
        snprintf(buf, (size_t)num, "[%s]\n", st->section);
    else
        snprintf(buf, (size_t)num, "%.*s\n", (int)(e - b), b);
    return buf;
}

static int on_key(void *user, const char *section, const char *name, const char *value) {
    parse_state *st = user;
    (void)section; /* ours is trimmed and already validated */
    if (st->failed) return 1;
    if (!*name) return syntax_error(st, 0);
    const char *vb = value, *ve = value + strlen(value);
    unquote(&vb, &ve);
    char v[INI_MAX_LINE];
    snprintf(v, sizeof v, "%.*s", (int)(ve - vb), vb);
    if (!st->section)
        return fail(st, FS_ERR_INVALID, "%s:%d: %s = %s: key before the first [section]", st->g->path, st->line,
                    name, v);
    const fs_graph_entry *prev = fs_graph_find(st->g, st->section, name);
    if (prev)
        return fail(st, FS_ERR_INVALID, "%s:%d: [%s] %s = %s: duplicate key (first set on line %d)", st->g->path,
                    st->line, st->section, name, v, prev->line);
    if (add_entry(st->g, st->section, name, v, st->g->path, st->line))
        return fail(st, FS_ERR_NOMEM, "%s: out of memory", st->g->path);
    return 1;
}

static int parse(fs_graph *g, const char *text, size_t len, fs_error *err) {
    parse_state st = {.g = g, .pos = text, .end = text + len};
    if (memchr(text, '\0', len))
        return fs_error_set(err, FS_ERR_INVALID, "%s: contains a NUL byte; not an INI text file", g->path);
    int rc = ini_parse_stream(next_line, &st, on_key, &st);
    /* inih keeps going after its own syntax errors and returns the first
     * one's line; ours stop the reader. Report whichever came first. */
    if (rc > 0 && (!st.failed || rc < st.line))
        return fs_error_set(err, FS_ERR_INVALID, "%s:%d: expected 'key = value' or '[section]'", g->path, rc);
    if (st.failed) {
        if (err) *err = st.err;
        return st.status;
    }
    if (rc != 0) return fs_error_set(err, FS_ERR_INVALID, "%s: cannot parse (inih error %d)", g->path, rc);
    return FS_OK;
}

int fs_graph_load_string(fs_graph **out, const char *name, const char *text, fs_error *err) {
    if (!out || !text) return fs_error_set(err, FS_ERR_INVALID, "fs_graph_load_string: NULL argument");
    *out = NULL;
    fs_graph *g = graph_new(NULL, name ? name : "<string>");
    if (!g) return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    int rc = parse(g, text, strlen(text), err);
    if (rc != FS_OK) {
        fs_graph_destroy(g);
        return rc;
    }
    *out = g;
    return FS_OK;
}

/* The whole file, read only when it is a regular file: a FIFO would block
 * the open and the reads, /dev/zero never end. */
static int read_graph_file(const char *path, char **text, size_t *len, fs_error *err) {
    *text = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return fs_error_set(err, errno == ENOENT ? FS_ERR_NOT_FOUND : FS_ERR_IO, "%s: cannot open: %s", path,
                            strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return fs_error_set(err, FS_ERR_IO, "%s: not a regular file: give the graph's .ini file", path);
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    char *buf = malloc(cap);
    int rc = buf ? FS_OK : fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory", path);
    while (!rc) {
        if (n + 1 == cap) { /* the file grew while being read */
            char *p = realloc(buf, cap *= 2);
            if (!p) {
                rc = fs_error_set(err, FS_ERR_NOMEM, "%s: out of memory", path);
                break;
            }
            buf = p;
        }
        ssize_t r = read(fd, buf + n, cap - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) rc = fs_error_set(err, FS_ERR_IO, "%s: cannot read: %s", path, strerror(errno));
        if (r <= 0) break;
        n += (size_t)r;
    }
    close(fd);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return FS_OK;
}

int fs_graph_load(fs_graph **out, const char *path, fs_error *err) {
    if (!out || !path) return fs_error_set(err, FS_ERR_INVALID, "fs_graph_load: NULL argument");
    *out = NULL;
    char *text;
    size_t len;
    int rc = read_graph_file(path, &text, &len, err);
    if (rc) return rc;
    fs_graph *g = graph_new(path, NULL);
    if (!g) rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    if (rc == FS_OK) rc = parse(g, text, len, err);
    /* a graph with nothing in it is a wrong or truncated file, not a request for every default */
    if (rc == FS_OK && g->n == 0 && g->n_sections == 0)
        rc = fs_error_set(err, FS_ERR_INVALID,
                          "%s: the graph file is empty: describe the model and its data there (fsrun --help-graph "
                          "lists the keys; conf/ holds examples)",
                          path);
    free(text);
    if (rc != FS_OK) {
        fs_graph_destroy(g);
        return rc;
    }
    *out = g;
    return FS_OK;
}

/* ---- the text form: what an INI line can hold ---- */

/* Values the parser would trim or unquote are written in quotes, in the INI
 * and in messages (where an empty value would otherwise be invisible). */
static int needs_quotes(const char *v) {
    size_t n = strlen(v);
    return n == 0 || isspace((unsigned char)v[0]) || isspace((unsigned char)v[n - 1]) ||
           (n >= 2 && v[0] == '"' && v[n - 1] == '"');
}

/* How one entry is written: "key = value", quoted when the parser would
 * change it, and "key=value" when the spaced form would not fit the line or
 * when the value starts with ';' (after " = " inih takes it for a comment;
 * right after '=' it is text). */
typedef struct line_form {
    const char *quote; /* "\"" or "" */
    const char *eq;    /* " = " or "=" */
    size_t len;        /* of the whole line, without its '\n' */
} line_form;

static line_form form_of(const char *key, const char *value) {
    size_t lk = strlen(key), lv = strlen(value);
    line_form f = {lv && needs_quotes(value) ? "\"" : "", " = ", 0};
    size_t lq = 2 * strlen(f.quote);
    if ((!*f.quote && value[0] == ';') || lk + 3 + lq + lv > MAX_TEXT) f.eq = "=";
    f.len = lk + strlen(f.eq) + lq + lv;
    return f;
}

/* Why key = value cannot be an INI line that reads back as exactly that
 * value (NULL: it can). */
static const char *unwritable(const char *key, const char *value) {
    for (const char *p = value; *p; p++) {
        if (*p == '\n' || *p == '\r') return "the value may not contain a line break";
        if (*p == ';' && p > value && isspace((unsigned char)p[-1]))
            return "the value may not contain ' ;' (an INI comment)";
    }
    if (form_of(key, value).len > MAX_TEXT) return "the line would be longer than the graph's limit";
    return NULL;
}

static int valid_key(const char *b, const char *e) {
    if (b == e) return 0;
    for (const char *p = b; p < e; p++)
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-') return 0;
    return 1;
}

/* Sets section.key = value (replacing an entry of that section and key),
 * from `file` at `line`. The caller has checked everything. */
static int store(fs_graph *g, const char *section, const char *key, const char *value, const char *file, int line) {
    fs_graph_entry *e = (fs_graph_entry *)fs_graph_find(g, section, key);
    const char *f = intern_file(g, file);
    if (!f) return FS_ERR_NOMEM;
    if (!e) return add_entry(g, section, key, value, f, line) ? FS_ERR_NOMEM : FS_OK;
    char *v = dup_str(value);
    if (!v) return FS_ERR_NOMEM;
    free((char *)e->value);
    e->value = v;
    e->file = f;
    e->line = line;
    return FS_OK;
}

int fs_graph_put(fs_graph *g, const char *section, const char *key, const char *value, const char *origin,
                 fs_error *err) {
    if (!g || !section || !key || !value)
        return fs_error_set(err, FS_ERR_INVALID, "fs_graph_put: NULL argument");
    if (!section_known(section)) {
        char hint[384];
        section_hint(section, hint, sizeof hint);
        return fs_error_set(err, FS_ERR_INVALID, "[%s]: unknown section%s", section, hint);
    }
    if (!valid_key(key, key + strlen(key)))
        return fs_error_set(err, FS_ERR_INVALID, "[%s] '%s': a key is letters, digits, '_' and '-'", section, key);
    const char *why = unwritable(key, value);
    if (why) return fs_error_set(err, FS_ERR_INVALID, "[%s] %s: %s", section, key, why);
    if (store(g, section, key, value, origin ? origin : SET_FILE, 0))
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    return FS_OK;
}

int fs_graph_set(fs_graph *g, const char *a, fs_error *err) {
    if (!g || !a) return fs_error_set(err, FS_ERR_INVALID, "fs_graph_set: NULL argument");
    const char *eq = strchr(a, '=');
    const char *lb = a, *le = eq ? eq : a;
    trim(&lb, &le);
    const char *dot = NULL;
    for (const char *p = lb; p < le; p++)
        if (*p == '.') dot = p;
    const char *sb = lb, *se = dot ? dot : lb, *kb = dot ? dot + 1 : le, *ke = le;
    trim(&sb, &se);
    trim(&kb, &ke);
    if (!eq || !dot || sb == se || !valid_key(kb, ke))
        return fs_error_set(err, FS_ERR_INVALID, "--set '%s': expected section.key=value", a);

    const char *vb = eq + 1, *ve = eq + strlen(eq);
    trim(&vb, &ve);
    unquote(&vb, &ve);
    if ((ke - kb) + (ve - vb) + 3 > MAX_TEXT)
        return fs_error_set(err, FS_ERR_INVALID, "--set '%s': key and value longer than %d characters", a,
                            MAX_TEXT - 3);
    char *section = dupn(sb, (size_t)(se - sb)), *key = dupn(kb, (size_t)(ke - kb));
    char *value = dupn(vb, (size_t)(ve - vb));
    int rc = FS_OK;
    const char *why = value && key ? unwritable(key, value) : NULL;
    if (!section || !key || !value) {
        rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    } else if (!section_known(section)) {
        char hint[384];
        section_hint(section, hint, sizeof hint);
        rc = fs_error_set(err, FS_ERR_INVALID, "--set '%s': [%s]: unknown section%s", a, section, hint);
    } else if (why) {
        rc = fs_error_set(err, FS_ERR_INVALID, "--set '%s': %s", a, why);
    } else if (store(g, section, key, value, SET_FILE, 0)) {
        rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    free(section);
    free(key);
    free(value);
    return rc;
}

/* ---- derived graphs ---- */

int fs_graph_copy(fs_graph **out, const fs_graph *base, const char *name, int (*keep)(const char *section),
                  fs_error *err) {
    *out = NULL;
    fs_graph *g = graph_new(NULL, name);
    int rc = g ? FS_OK : FS_ERR_NOMEM;
    if (!rc) {
        free(g->dir); /* relative paths in the copy mean what they meant in base */
        if (!(g->dir = dup_str(base->dir))) rc = FS_ERR_NOMEM;
    }
    for (size_t s = 0; s < base->n_sections && !rc; s++) /* empty sections too, in their order */
        if ((!keep || keep(base->sections[s])) && !add_section(g, base->sections[s])) rc = FS_ERR_NOMEM;
    for (size_t i = 0; i < base->n && !rc; i++) {
        const fs_graph_entry *e = &base->entries[i];
        if (keep && !keep(e->section)) continue;
        const char *file = intern_file(g, e->file);
        if (!file || add_entry(g, e->section, e->key, e->value, file, e->line)) rc = FS_ERR_NOMEM;
    }
    if (rc) {
        fs_graph_destroy(g);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    *out = g;
    return FS_OK;
}

/* ---- to_ini ---- */

/* Writes the INI into buf (NULL to measure); returns its length. */
static size_t render(const fs_graph *g, char *buf, size_t cap) {
    size_t n = 0;
#define EMIT(...) n += (size_t)snprintf(buf ? buf + n : NULL, buf ? cap - n : 0, __VA_ARGS__)
    for (size_t s = 0; s < g->n_sections; s++) {
        EMIT("%s[%s]\n", s ? "\n" : "", g->sections[s]);
        for (size_t i = 0; i < g->n; i++) {
            const fs_graph_entry *e = &g->entries[i];
            if (strcmp(e->section, g->sections[s]) != 0) continue;
            line_form f = form_of(e->key, e->value);
            EMIT("%s%s%s%s%s\n", e->key, f.eq, f.quote, e->value, f.quote);
        }
    }
#undef EMIT
    return n;
}

char *fs_graph_to_ini(const fs_graph *g) {
    if (!g) return NULL;
    size_t n = render(g, NULL, 0);
    char *s = malloc(n + 1);
    if (s) {
        s[0] = '\0';
        render(g, s, n + 1);
    }
    return s;
}

void fs_graph_entry_at(char *buf, size_t cap, const fs_graph_entry *e) {
    if (e->line > 0)
        snprintf(buf, cap, "%s:%d", e->file, e->line);
    else
        snprintf(buf, cap, "%s", e->file);
}

/* ---- configuration ---- */

typedef struct item {
    char *name;
    int type;
    char *text;
    int64_t i;
    double f;
    int b;
    int64_t *list;
    size_t n_list;
    char *where;
    int is_set;
} item;

struct fs_config {
    item *items;
    size_t n;
};

void fs_config_destroy(fs_config *c) {
    if (!c) return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->items[i].name);
        free(c->items[i].text);
        free(c->items[i].list);
        free(c->items[i].where);
    }
    free(c->items);
    free(c);
}

static int has_min(const fs_param_spec *s) { return s->min <= s->max && s->min > -FS_PARAM_UNBOUNDED; }
static int has_max(const fs_param_spec *s) { return s->min <= s->max && s->max < FS_PARAM_UNBOUNDED; }

void fs_param_range_text(char *buf, size_t cap, const fs_param_spec *s) {
    int integer = s->type == FS_PARAM_INT || s->type == FS_PARAM_INT_LIST;
    const char *f = integer ? "%.0f" : "%g";
    char lo[64], hi[64];
    snprintf(lo, sizeof lo, f, s->min);
    snprintf(hi, sizeof hi, f, s->max);
    if (!integer && s->type != FS_PARAM_FLOAT)
        buf[0] = '\0';
    else if (has_min(s) && has_max(s))
        snprintf(buf, cap, "[%s, %s]", lo, hi);
    else if (has_min(s))
        snprintf(buf, cap, ">= %s", lo);
    else if (has_max(s))
        snprintf(buf, cap, "<= %s", hi);
    else
        buf[0] = '\0';
}

/* " in [1, 8]", " >= 1", " <= 8" or "": the range as an error message ends. */
static void describe_range(char *buf, size_t cap, const fs_param_spec *s) {
    char r[136];
    fs_param_range_text(r, sizeof r, s);
    snprintf(buf, cap, "%s%s", !*r ? "" : r[0] == '[' ? " in " : " ", r);
}

static int in_range(const fs_param_spec *s, double v) {
    return (!has_min(s) || v >= s->min) && (!has_max(s) || v <= s->max);
}

/* 0, -1 when [b, e) is not a decimal integer, -2 when it is one that
 * int64 cannot hold. */
static int parse_int(const char *b, const char *e, int64_t *out) {
    const char *p = b < e && (*b == '+' || *b == '-') ? b + 1 : b;
    if (p == e) return -1;
    for (const char *q = p; q < e; q++)
        if (!isdigit((unsigned char)*q)) return -1; /* strtoll would skip spaces */
    char tmp[32];
    if (e - b >= (long)sizeof tmp) return -2;
    memcpy(tmp, b, (size_t)(e - b));
    tmp[e - b] = '\0';
    errno = 0;
    long long v = strtoll(tmp, NULL, 10);
    if (errno == ERANGE) return -2;
    *out = v;
    return 0;
}

/* `text` must be one of the spec's '|'-separated choices. */
static int parse_enum(const fs_param_spec *s, const char *text, char *why, size_t cap) {
    const char *c = s->choices ? s->choices : "";
    size_t lt = strlen(text);
    for (const char *p = c;;) {
        const char *bar = strchr(p, '|');
        size_t lc = bar ? (size_t)(bar - p) : strlen(p);
        if (lc == lt && strncmp(p, text, lt) == 0) return 0;
        if (!bar) break;
        p = bar + 1;
    }
    size_t k = (size_t)snprintf(why, cap, "must be one of: ");
    for (const char *p = c; *p && k + 3 < cap; p++) {
        if (*p == '|') {
            why[k++] = ',';
            why[k++] = ' ';
        } else {
            why[k++] = *p;
        }
    }
    why[k] = '\0';
    return -1;
}

/* Comma-separated integers, each in the spec's range, into it->list. */
static int parse_int_list(const fs_param_spec *s, const char *text, item *it, char *why, size_t cap) {
    char range[160];
    describe_range(range, sizeof range, s);
    const char *end = text + strlen(text);
    size_t n = 1;
    for (const char *p = text; *p; p++) n += *p == ',';
    it->list = calloc(n, sizeof *it->list);
    if (!it->list) {
        snprintf(why, cap, "out of memory");
        return -1;
    }
    it->n_list = 0;
    for (const char *p = text;;) {
        const char *comma = strchr(p, ','), *pe = comma ? comma : end, *pb = p;
        trim(&pb, &pe);
        int64_t v;
        if (parse_int(pb, pe, &v) || !in_range(s, (double)v)) {
            snprintf(why, cap, "must be a comma-separated list of integers%s", range);
            return -1;
        }
        it->list[it->n_list++] = v;
        if (!comma) break;
        p = comma + 1;
    }
    return 0;
}

/* Types and range-checks `text` into `it`; on failure writes the reason. */
static int parse_value(const fs_param_spec *s, const char *text, item *it, char *why, size_t cap) {
    char range[160];
    switch (s->type) {
    case FS_PARAM_INT: {
        describe_range(range, sizeof range, s);
        int bad = parse_int(text, text + strlen(text), &it->i);
        if (bad == -2) {
            snprintf(why, cap, "must be an integer%s; the %s a key holds is %" PRId64, range,
                     text[0] == '-' ? "smallest" : "largest", text[0] == '-' ? INT64_MIN : INT64_MAX);
            return -1;
        }
        if (bad || !in_range(s, (double)it->i)) {
            snprintf(why, cap, "must be an integer%s", range);
            return -1;
        }
        return 0;
    }
    case FS_PARAM_FLOAT: {
        describe_range(range, sizeof range, s);
        char *stop = (char *)text;
        /* strtod would skip leading spaces; an empty value is not 0. */
        if (*text && !isspace((unsigned char)*text)) it->f = strtod(text, &stop);
        if (stop == text || *stop || !isfinite(it->f) || !in_range(s, it->f)) {
            snprintf(why, cap, "must be a number%s", range);
            return -1;
        }
        return 0;
    }
    case FS_PARAM_BOOL: {
        static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no", "off", "0"};
        for (size_t k = 0; k < 4; k++) {
            if (strcasecmp(text, yes[k]) == 0) return it->b = 1, 0;
            if (strcasecmp(text, no[k]) == 0) return it->b = 0, 0;
        }
        snprintf(why, cap, "must be true or false");
        return -1;
    }
    case FS_PARAM_STRING:
        return 0;
    case FS_PARAM_ENUM:
        return parse_enum(s, text, why, cap);
    case FS_PARAM_INT_LIST:
        return parse_int_list(s, text, it, why, cap);
    default:
        snprintf(why, cap, "schema declares unknown type %d", (int)s->type);
        return -1;
    }
}

int fs_param_same_value(const fs_param_spec *s, const char *a, const char *b) {
    if (!strcmp(a, b)) return 1;
    item x, y;
    memset(&x, 0, sizeof x);
    memset(&y, 0, sizeof y);
    char why[256];
    int same = 0;
    if (!parse_value(s, a, &x, why, sizeof why) && !parse_value(s, b, &y, why, sizeof why)) {
        switch (s->type) {
        case FS_PARAM_INT: same = x.i == y.i; break;
        case FS_PARAM_FLOAT: same = x.f == y.f; break;
        case FS_PARAM_BOOL: same = x.b == y.b; break;
        case FS_PARAM_INT_LIST:
            same = x.n_list == y.n_list && (!x.n_list || !memcmp(x.list, y.list, x.n_list * sizeof *x.list));
            break;
        default: break; /* strings and choices: only the same text */
        }
    }
    free(x.list);
    free(y.list);
    return same;
}

/* "graph.ini:12: [attention] window = 3" or "--set: [attention] window = 3". */
static void describe_entry(char *buf, size_t cap, const fs_graph_entry *e) {
    const char *q = needs_quotes(e->value) ? "\"" : "";
    if (e->line > 0)
        snprintf(buf, cap, "%s:%d: [%s] %s = %s%s%s", e->file, e->line, e->section, e->key, q, e->value, q);
    else
        snprintf(buf, cap, "%s: [%s] %s = %s%s%s", e->file, e->section, e->key, q, e->value, q);
}

static int in_list(const char *const *list, const char *key) {
    for (; list && *list; list++)
        if (strcmp(*list, key) == 0) return 1;
    return 0;
}

static int unknown_key(const fs_graph_entry *e, const fs_param_spec *spec, size_t n_spec,
                       const char *const *extra, fs_error *err) {
    char where[400], hint[400];
    describe_entry(where, sizeof where, e);
    size_t best = (size_t)-1;
    const char *pick = NULL;
    for (size_t i = 0; i < n_spec; i++)
        if (is_close(e->key, spec[i].name, &best)) pick = spec[i].name;
    for (const char *const *x = extra; x && *x; x++)
        if (is_close(e->key, *x, &best)) pick = *x;
    if (pick) {
        snprintf(hint, sizeof hint, "did you mean '%s'?", pick);
    } else {
        int k = snprintf(hint, sizeof hint, "known keys: ");
        int first = 1;
        for (size_t i = 0; i < n_spec && k >= 0 && (size_t)k < sizeof hint; i++, first = 0)
            k += snprintf(hint + k, sizeof hint - (size_t)k, "%s%s", first ? "" : ", ", spec[i].name);
        for (const char *const *x = extra; x && *x && k >= 0 && (size_t)k < sizeof hint; x++, first = 0)
            k += snprintf(hint + k, sizeof hint - (size_t)k, "%s%s", first ? "" : ", ", *x);
    }
    return fs_error_set(err, FS_ERR_INVALID, "%s: unknown key in [%s]; %s", where, e->section, hint);
}

int fs_config_resolve(fs_config **out, const fs_graph *g, const char *const *sections, size_t n_sections,
                      const fs_param_spec *spec, size_t n_spec, const char *const *extra, fs_error *err) {
    if (!out || !g || !sections || n_sections == 0 || (!spec && n_spec))
        return fs_error_set(err, FS_ERR_INVALID, "fs_config_resolve: bad arguments");
    *out = NULL;
    fs_config *c = calloc(1, sizeof *c);
    const fs_graph_entry **src = calloc(n_spec ? n_spec : 1, sizeof *src);
    if (!c || !src || !(c->items = calloc(n_spec ? n_spec : 1, sizeof *c->items))) {
        free(src);
        fs_config_destroy(c);
        return fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    c->n = n_spec;
    for (size_t k = 0; k < n_spec; k++)
        for (size_t s = 0; s < n_sections && !src[k]; s++) src[k] = fs_graph_find(g, sections[s], spec[k].name);

    /* Walk the graph in order so the first problem reported is the one
     * nearest the top of the file. */
    int rc = FS_OK;
    char why[400], where[400];
    for (size_t i = 0; i < g->n && rc == FS_OK; i++) {
        const fs_graph_entry *e = &g->entries[i];
        size_t k = 0;
        while (k < n_spec && strcmp(spec[k].name, e->key) != 0) k++;
        if (k == n_spec) {
            if (strcmp(e->section, sections[0]) == 0 && !in_list(extra, e->key))
                rc = unknown_key(e, spec, n_spec, extra, err);
            continue;
        }
        if (src[k] != e) continue;
        item *it = &c->items[k];
        if (parse_value(&spec[k], e->value, it, why, sizeof why)) {
            describe_entry(where, sizeof where, e);
            rc = fs_error_set(err, FS_ERR_INVALID, "%s: %s", where, why);
        }
    }
    for (size_t k = 0; k < n_spec && rc == FS_OK; k++) {
        const fs_param_spec *s = &spec[k];
        item *it = &c->items[k];
        it->type = s->type;
        it->is_set = src[k] != NULL;
        if (src[k]) {
            describe_entry(where, sizeof where, src[k]);
        } else if (!s->default_value) {
            rc = fs_error_set(err, FS_ERR_INVALID, "%s: [%s] %s: required key is missing%s%s%s", g->path, sections[0],
                        s->name, s->help ? " (" : "", s->help ? s->help : "", s->help ? ")" : "");
            break;
        } else {
            snprintf(where, sizeof where, "[%s] %s (default %s)", sections[0], s->name, s->default_value);
            if (parse_value(s, s->default_value, it, why, sizeof why)) {
                rc = fs_error_set(err, FS_ERR_INVALID, "%s: invalid default in the schema: %s", where, why);
                break;
            }
        }
        it->name = dup_str(s->name);
        it->text = dup_str(src[k] ? src[k]->value : s->default_value);
        it->where = dup_str(where);
        if (!it->name || !it->text || !it->where) rc = fs_error_set(err, FS_ERR_NOMEM, "out of memory");
    }
    free(src);
    if (rc != FS_OK) {
        fs_config_destroy(c);
        return rc;
    }
    *out = c;
    return FS_OK;
}

static const item *lookup(const fs_config *c, const char *key) {
    if (!c || !key) return NULL;
    for (size_t i = 0; i < c->n; i++)
        if (c->items[i].name && strcmp(c->items[i].name, key) == 0) return &c->items[i];
    return NULL;
}

/* Wrong-type and unknown keys read as zero, as the plugin ABI promises. */
static const item *typed(const fs_config *c, const char *key, int type) {
    const item *it = lookup(c, key);
    return it && it->type == type ? it : NULL;
}

int64_t fs_config_int(const fs_config *c, const char *key) {
    const item *it = typed(c, key, FS_PARAM_INT);
    return it ? it->i : 0;
}

double fs_config_float(const fs_config *c, const char *key) {
    const item *it = typed(c, key, FS_PARAM_FLOAT);
    return it ? it->f : 0.0;
}

int fs_config_bool(const fs_config *c, const char *key) {
    const item *it = typed(c, key, FS_PARAM_BOOL);
    return it ? it->b : 0;
}

size_t fs_config_int_list(const fs_config *c, const char *key, int64_t *out, size_t cap) {
    const item *it = typed(c, key, FS_PARAM_INT_LIST);
    for (size_t i = 0; it && out && i < it->n_list && i < cap; i++) out[i] = it->list[i];
    return it ? it->n_list : 0;
}

/* The value's text for every type, not only STRING and ENUM. */
const char *fs_config_string(const fs_config *c, const char *key) {
    return lookup(c, key) ? lookup(c, key)->text : NULL;
}

const char *fs_config_where(const fs_config *c, const char *key) {
    return lookup(c, key) ? lookup(c, key)->where : NULL;
}

int fs_config_is_set(const fs_config *c, const char *key) { return lookup(c, key) ? lookup(c, key)->is_set : 0; }
