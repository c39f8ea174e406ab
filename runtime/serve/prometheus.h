/* prometheus.h — GET /metrics in Prometheus' text exposition format
 * (version 0.0.4): a "# HELP" and a "# TYPE" line per family, then its
 * samples; histograms as cumulative _bucket{le=...} lines, _sum and
 * _count. Every name starts with "fastserve_". */
#ifndef FS_SERVE_PROMETHEUS_H
#define FS_SERVE_PROMETHEUS_H

#include <stdint.h>

#include "serve/buf.h"
#include "serve/engine.h"

/* "# HELP name help" and "# TYPE name type" (counter, gauge, histogram). */
void fs_prom_family(fs_buf *out, const char *name, const char *type, const char *help);
/* name{labels} value; labels is 'key="value",...' or NULL. */
void fs_prom_sample(fs_buf *out, const char *name, const char *labels, double value);
void fs_prom_histogram(fs_buf *out, const char *name, const char *help, const fs_engine_histogram *h);

/* Every family the engine's statistics give: requests waiting, running and
 * swapped, queue length per scheduler level, KV and swap blocks, prefix
 * cache hits, tokens in and out, preemptions, requests finished by reason,
 * iterations, and the histograms of time to first token, inter-token
 * latency, end-to-end latency and iteration time. */
void fs_prom_engine(fs_buf *out, const fs_engine_stats *st);

#endif
